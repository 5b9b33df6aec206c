//! Tests of `NVIDIA_REQUIRE_*`, each row citing the toolkit / libnvidia-container behaviour.

use super::*;

/// A host with fixed facts, counting how often each is asked for.
#[derive(Default)]
struct Host {
    cuda: Option<&'static str>,
    driver: Option<&'static str>,
    arch: Option<&'static str>,
    brand: Option<&'static str>,
    asked: Vec<&'static str>,
}

impl Facts for Host {
    fn cuda_version(&mut self) -> Option<String> {
        self.asked.push("cuda");
        self.cuda.map(str::to_owned)
    }
    fn driver_version(&mut self) -> Option<String> {
        self.asked.push("driver");
        self.driver.map(str::to_owned)
    }
    fn arch(&mut self, _: u32) -> Option<String> {
        self.asked.push("arch");
        self.arch.map(str::to_owned)
    }
    fn brand(&mut self, _: u32) -> Option<String> {
        self.asked.push("brand");
        self.brand.map(str::to_owned)
    }
}

fn h100() -> Host {
    Host {
        cuda: Some("13.0"),
        driver: Some("580.159.04"),
        arch: Some("9.0"),
        brand: Some("Tesla"),
        asked: Vec::new(),
    }
}

fn req(expr: &str) -> Vec<Requirement> {
    vec![Requirement {
        var: "NVIDIA_REQUIRE_CUDA".into(),
        expr: expr.into(),
    }]
}

/// dsl.c: space = OR, comma = AND, operators, version and brand comparison.
#[test]
fn expression_table() {
    let rows: &[(&str, bool, &str)] = &[
        ("cuda>=12.4", true, "13.0 >= 12.4"),
        ("cuda>=13", true, "trailing .0 ignored: 13 == 13.0"),
        ("cuda>13.0", false, "strictly greater"),
        ("cuda<14", true, "less than"),
        ("cuda=13.0.0", true, "13.0.0 == 13.0"),
        ("cuda!=13.0", false, "not equal"),
        ("driver>=580.100", true, "numeric per component: 159 > 100"),
        (
            "driver>=580.95.05",
            true,
            "580.159.04 > 580.95.05 (not a string compare)",
        ),
        ("driver<580", false, "580.159.04 < 580 is false"),
        ("arch=9.0", true, "compute capability"),
        ("arch>=8.0,arch<10.0", true, "AND within a term"),
        ("brand=tesla", true, "brand case-insensitive"),
        ("brand!=GeForce", true, "brand !="),
        ("cuda>=99 brand=tesla", true, "OR across terms"),
        ("cuda>=99 driver>=999", false, "no term holds"),
        (
            "cuda>=12.4,driver<500 arch=9.0",
            true,
            "first term fails on driver, second holds",
        ),
        ("  cuda>=12.4  ", true, "empty fields skipped"),
        ("", true, "empty expression: no constraint"),
    ];
    for (expr, want, why) in rows {
        let got = check(&req(expr), &[0], &mut h100());
        assert_eq!(got.is_ok(), *want, "{why}: {expr:?} -> {got:?}");
    }
}

/// dsl.c: invalid expressions are errors (never a silent pass).
#[test]
fn invalid_expressions() {
    for bad in [
        "cuda==12",
        "cuda=>12",
        "gpu>=1",
        "cuda>=",
        "cuda12",
        "brand>=tesla",
        "cuda>=12.x",
        "cuda>=-1",
        "=12",
    ] {
        let e = check(&req(bad), &[0], &mut h100()).unwrap_err().to_string();
        assert!(
            e.contains("NVIDIA_REQUIRE_CUDA") && e.contains("invalid expression"),
            "{bad}: {e}"
        );
    }
    // an invalid factor in a later term is still an error, even though the first term holds
    assert!(check(&req("cuda>=12 gpu>=1"), &[0], &mut h100()).is_err());
}

/// dsl.c evaluates lazily: a satisfied first term never fetches a brand (NVML).
#[test]
fn facts_are_fetched_lazily() {
    let mut h = h100();
    let expr = "cuda>=12.4 brand=tesla,driver>=470,driver<471 brand=unknown,driver>=470,driver<471 brand=nvidia,driver>=470,driver<471";
    check(&req(expr), &[0], &mut h).unwrap();
    assert_eq!(
        h.asked,
        ["cuda"],
        "the real nvidia/cuda:12.4 value passes on its first term"
    );
    // on an old driver the brand terms are reached
    let mut h = Host {
        cuda: Some("11.4"),
        driver: Some("470.82.01"),
        ..h100()
    };
    check(&req(expr), &[0], &mut h).unwrap();
    assert!(h.asked.contains(&"brand"));
}

/// Several variables are ANDed; the error names the variable, the condition and the host value.
#[test]
fn every_variable_must_hold_and_errors_say_why() {
    let reqs = vec![
        Requirement {
            var: "NVIDIA_REQUIRE_ARCH".into(),
            expr: "arch>=8.0".into(),
        },
        Requirement {
            var: "NVIDIA_REQUIRE_CUDA".into(),
            expr: "cuda>=99.0 brand=geforce".into(),
        },
    ];
    let e = check(&reqs, &[0], &mut h100()).unwrap_err().to_string();
    assert!(e.contains("NVIDIA_REQUIRE_CUDA"), "{e}");
    assert!(
        e.contains("unsatisfied condition: cuda>=99.0, please update your driver"),
        "{e}"
    );
    assert!(
        e.contains("CUDA driver version 13.0") && e.contains("GPU brand Tesla"),
        "{e}"
    );
    assert!(e.contains("NVIDIA_DISABLE_REQUIRE=true"), "{e}");
}

/// LNC: unknown driver/CUDA versions and, with no device, arch/brand count as satisfied.
#[test]
fn unknown_facts_and_no_device() {
    let mut h = Host::default();
    assert!(check(&req("cuda>=99,driver>=999"), &[0], &mut h).is_ok());
    let mut h = h100();
    assert!(
        check(&req("arch=1.0,brand=quadro"), &[], &mut h).is_ok(),
        "none: no device"
    );
    assert!(!h.asked.contains(&"brand"));
    // evaluated for every selected GPU
    let mut h = h100();
    check(&req("arch>=8.0"), &[0, 1], &mut h).unwrap();
    assert_eq!(h.asked.iter().filter(|a| **a == "arch").count(), 2);
}

fn env<'a>(vars: &[(&'a str, &'a str)]) -> HashMap<&'a str, &'a str> {
    vars.iter().copied().collect()
}

/// cuda_image.go GetRequirements / HasDisableRequire, legacy images.
#[test]
fn collecting_requirements() {
    let e = env(&[
        ("NVIDIA_REQUIRE_CUDA", "cuda>=12"),
        ("NVIDIA_REQUIRE_ARCH", "arch>=8"),
        ("NVIDIA_REQUIRE_JETPACK", "csv-mounts=all"),
        ("OTHER", "x"),
    ]);
    let r = collect(&e, false, false).unwrap();
    let vars: Vec<&str> = r.iter().map(|r| r.var.as_str()).collect();
    assert_eq!(
        vars,
        ["NVIDIA_REQUIRE_ARCH", "NVIDIA_REQUIRE_CUDA"],
        "JETPACK skipped; sorted"
    );
    // legacy: cuda>=major.minor from CUDA_VERSION
    let r = collect(&env(&[("CUDA_VERSION", "12.4.1")]), true, false).unwrap();
    assert_eq!(r[0].expr, "cuda>=12.4");
    let r = collect(&env(&[("CUDA_VERSION", "11")]), true, false).unwrap();
    assert_eq!(r[0].expr, "cuda>=11.0");
    // issue 15: components of any number of digits, compared as the require code compares
    for (v, want) in [
        ("1234567890.1", "cuda>=1234567890.1"),
        ("99999999999999999999.0.1", "cuda>=99999999999999999999.0"),
        ("12.0000000001", "cuda>=12.0000000001"),
    ] {
        let r = collect(&env(&[("CUDA_VERSION", v)]), true, false).unwrap();
        assert_eq!(r[0].expr, want, "{v}");
    }
    let huge = collect(&env(&[("CUDA_VERSION", "1234567890.1")]), true, false).unwrap();
    let e = check(&huge, &[0], &mut h100()).unwrap_err().to_string();
    assert!(
        e.contains("cuda>=1234567890.1"),
        "refused by the requirement: {e}"
    );
    let small = collect(&env(&[("CUDA_VERSION", "12.0000000001")]), true, false).unwrap();
    assert!(
        check(&small, &[0], &mut h100()).is_ok(),
        "12.1 <= the host's CUDA"
    );
    assert!(
        collect(&env(&[("CUDA_VERSION", "eleven")]), true, false)
            .unwrap_err()
            .to_string()
            .contains("CUDA_VERSION")
    );
    // NVIDIA_DISABLE_REQUIRE as Go's ParseBool; the host config's disable-require
    for (v, off) in [
        ("true", true),
        ("1", true),
        ("T", true),
        ("True", true),
        ("yes", false),
        ("", false),
        ("false", false),
    ] {
        let e = env(&[
            ("NVIDIA_REQUIRE_CUDA", "cuda>=99"),
            ("NVIDIA_DISABLE_REQUIRE", v),
        ]);
        assert_eq!(collect(&e, false, false).unwrap().is_empty(), off, "{v:?}");
    }
    assert!(
        collect(&env(&[("NVIDIA_REQUIRE_CUDA", "cuda>=99")]), false, true)
            .unwrap()
            .is_empty()
    );
    // at most 32
    let names: Vec<String> = (0..33).map(|i| format!("NVIDIA_REQUIRE_X{i}")).collect();
    let e: HashMap<&str, &str> = names.iter().map(|n| (n.as_str(), "cuda>=1")).collect();
    assert!(collect(&e, false, false).is_err());
}

/// Outside input of any size: linear, no panic, no overflow.
#[test]
fn huge_and_hostile_values() {
    let long_version = format!("cuda>={}", "9".repeat(500));
    assert!(
        check(&req(&long_version), &[0], &mut h100()).is_err(),
        "a 500-digit version is just large"
    );
    // a 10 MB value: parsed in one pass, evaluated factor by factor
    let many = "cuda>=1,".repeat(1_250_000);
    assert!(check(&req(&many), &[0], &mut h100()).is_ok());
    assert!(
        check(&req("cuda>=1\ncuda>=2"), &[0], &mut h100()).is_err(),
        "a newline is not a separator"
    );
    assert!(cmp_versions("0010.0", "10") == Ordering::Equal);
}
