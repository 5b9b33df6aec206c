//! NVIDIA_REQUIRE_* end to end under runc. The fake driver's libcuda declares CUDA 12.4 in its
//! ELF note; its NVML says brand Tesla, compute capability 8.0; the driver is 550.54.15.

#![forbid(unsafe_code)]

mod common;

use common::*;

/// Run; also return which NVML calls the hook made (the fake NVML logs them).
fn run_req(env: &[&str], config: Option<std::path::PathBuf>) -> (Run, String) {
    let log = std::env::temp_dir().join(format!(
        "nvhook-req-nvml-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let mut s = Spec::new(env, "echo started");
    s.hook_env = vec![format!("NVML_FAKE_LOG={}", log.display())];
    s.config = config;
    let r = run_checked("runc", &s);
    let calls = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    (r, calls)
}

/// Each row: environment, whether the container starts, what the error must say.
#[test]
fn requirement_table() {
    type Row<'a> = (&'a [&'a str], bool, &'a [&'a str]);
    let rows: &[Row] = &[
        (
            &[
                "NVIDIA_VISIBLE_DEVICES=all",
                "NVIDIA_REQUIRE_CUDA=cuda>=12.0",
            ],
            true,
            &[],
        ),
        (
            &[
                "NVIDIA_VISIBLE_DEVICES=all",
                "NVIDIA_REQUIRE_CUDA=cuda>=12.5",
            ],
            false,
            &[
                "NVIDIA_REQUIRE_CUDA",
                "unsatisfied condition: cuda>=12.5",
                "please update your driver",
                "CUDA driver version 12.4",
            ],
        ),
        (
            &[
                "NVIDIA_VISIBLE_DEVICES=all",
                "NVIDIA_REQUIRE_CUDA=cuda>=99 brand=tesla",
            ],
            true,
            &[],
        ),
        (
            &[
                "NVIDIA_VISIBLE_DEVICES=all",
                "NVIDIA_REQUIRE_ARCH=arch>=8.0",
            ],
            true,
            &[],
        ),
        (
            &[
                "NVIDIA_VISIBLE_DEVICES=all",
                "NVIDIA_REQUIRE_ARCH=arch>=9.0",
            ],
            false,
            &["NVIDIA_REQUIRE_ARCH", "GPU compute capability 8.0"],
        ),
        (
            &[
                "NVIDIA_VISIBLE_DEVICES=all",
                "NVIDIA_REQUIRE_DRIVER=driver>=600",
            ],
            false,
            &["driver version 550.54.15"],
        ),
        (
            &[
                "NVIDIA_VISIBLE_DEVICES=all",
                "NVIDIA_REQUIRE_CUDA=cuda>=99",
                "NVIDIA_DISABLE_REQUIRE=true",
            ],
            true,
            &[],
        ),
        (
            &["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_REQUIRE_CUDA=cuda>>12"],
            false,
            &["invalid expression"],
        ),
        (&["CUDA_VERSION=12.4.1"], true, &[]),
        (
            &["CUDA_VERSION=12.6"],
            false,
            &["CUDA_VERSION", "cuda>=12.6"],
        ),
        // none: no device, so arch and brand are not checked
        (
            &[
                "NVIDIA_VISIBLE_DEVICES=none",
                "NVIDIA_REQUIRE_ARCH=arch>=9.0",
            ],
            true,
            &[],
        ),
    ];
    for (env, starts, says) in rows {
        let (r, _) = run_req(env, None);
        assert_eq!(
            r.ok && r.has("started"),
            *starts,
            "{env:?}:\n{}{}",
            r.stdout,
            r.stderr
        );
        for s in *says {
            assert!(r.stderr.contains(s), "{env:?}: {s:?} not in:\n{}", r.stderr);
        }
    }
}

#[test]
fn cuda_checks_read_libcuda_not_nvml() {
    // GPU 0: no MIG instances, so nothing else loads NVML either
    let (r, calls) = run_req(
        &["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_REQUIRE_CUDA=cuda>=12.0"],
        None,
    );
    assert!(r.ok, "{}", r.stderr);
    assert!(
        calls.is_empty(),
        "the CUDA version comes from libcuda's ELF note, without NVML: {calls}"
    );
    let (r, calls) = run_req(
        &[
            "NVIDIA_VISIBLE_DEVICES=0",
            "NVIDIA_REQUIRE_CUDA=cuda>=99 brand=tesla",
        ],
        None,
    );
    assert!(r.ok, "{}", r.stderr);
    assert!(
        calls.contains("nvmlDeviceGetBrand"),
        "brand needs NVML: {calls}"
    );
}

#[test]
fn host_can_disable_requirements() {
    let fx = fixtures();
    let cfg = fx.dir.join("config-disable-require.toml");
    let base = std::fs::read_to_string(&fx.config).unwrap();
    std::fs::write(&cfg, format!("{base}disable-require = true\n")).unwrap();
    let (r, _) = run_req(
        &["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_REQUIRE_CUDA=cuda>=99"],
        Some(cfg),
    );
    assert!(r.ok && r.has("started"), "{}", r.stderr);
}
