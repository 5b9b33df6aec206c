# nvhook: build, install, test.
PREFIX ?= /usr
DESTDIR ?=
HOOKS_DIR ?= /usr/share/containers/oci/hooks.d
CARGO ?= cargo

.PHONY: build install uninstall install-docker uninstall-docker check test deb deb-docker rpm

build:
	$(CARGO) build --release --locked

# Installs what `make build` built (run `make build` as your user first; install needs root).
install:
	@test -x target/release/nvhook || { echo "run 'make build' (as your user) first"; exit 1; }
	install -D -m 0755 target/release/nvhook $(DESTDIR)$(PREFIX)/bin/nvhook
	install -d $(DESTDIR)$(HOOKS_DIR)
	sed 's#"/usr/bin/nvhook"#"$(PREFIX)/bin/nvhook"#' hooks.d/nvhook.json > $(DESTDIR)$(HOOKS_DIR)/nvhook.json
	chmod 0644 $(DESTDIR)$(HOOKS_DIR)/nvhook.json
	@if [ -e $(DESTDIR)/etc/nvhook/config.toml ]; then \
		echo "keeping existing /etc/nvhook/config.toml"; \
	else \
		install -D -m 0644 packaging/config.toml $(DESTDIR)/etc/nvhook/config.toml; \
	fi

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/nvhook $(DESTDIR)$(HOOKS_DIR)/nvhook.json

# Opt-in, for `docker run --gpus`: $(PREFIX)/bin/nvidia-container-runtime-hook -> nvhook, the name
# dockerd looks up in its PATH when it starts (restart dockerd after). Refuses, saying why, when
# NVIDIA's own hook is installed; uninstall-docker removes only that link.
install-docker:
	packaging/install-docker.sh install $(PREFIX)/bin

uninstall-docker:
	packaging/install-docker.sh uninstall $(PREFIX)/bin

# Packages (cargo install --locked cargo-deb / cargo-generate-rpm): target/debian/nvhook_*.deb,
# target/generate-rpm/nvhook-*.rpm. Same files as `install`, with PREFIX=/usr.
deb:
	$(CARGO) deb --locked

# nvhook-docker: the same link as install-docker, as a package (needs nvhook; conflicts with
# NVIDIA's toolkit). target/debian/nvhook-docker_*.deb
deb-docker:
	$(CARGO) deb --locked --variant docker --no-build

rpm: build
	$(CARGO) generate-rpm

# The fast loop, root-free, in seconds: formatting, lints (fuzzing code included), unit tests.
check:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets --features fuzzing -- -D warnings
	$(CARGO) test --lib

# Every test: formatting, lints, unit tests, end-to-end tests with runc, crun and podman.
# Needs root; installs missing Debian packages itself.
test:
	tests/run.sh
