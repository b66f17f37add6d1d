# dialbackd: thin wrappers around cargo. `make run` builds and starts the daemon on the example
# configuration; `make test` runs every test.
# RUST_LOG (default info) sets the log level of `make run` and `make run-peer`.

PREFIX ?= /usr/local
DESTDIR ?=
BIN := target/release/dialbackd

.PHONY: all build setup test interop run run-peer demo check-config lint doc install clean bench

all: build

build:
	cargo build --release --locked

# The Debian packages the tests need (list in tests/setup.sh): as root, installs the missing ones;
# as another user, prints the `sudo apt-get install ...` line and fails. Instant when all present.
setup:
	@tests/setup.sh

# Everything: the Rust unit and integration tests, then the real-Prosody interop suite.
test: setup
	cargo test --all-targets --locked
	$(MAKE) interop

# Real-Prosody interop suite alone (root; needs the packages `make setup` installs).
# See tests/interop/README.md.
interop: setup
	cargo build --locked
	DIALBACKD_BIN=target/debug/dialbackd INTEROP_REQUIRE_DIALBACKD=1 tests/interop/run.sh

# The a.test instance (127.0.0.1); `make run-peer` in a second terminal starts b.test.
run: build
	RUST_LOG=$${RUST_LOG:-info} ./$(BIN) --config etc/dialbackd.toml

run-peer: build
	RUST_LOG=$${RUST_LOG:-info} ./$(BIN) --config etc/peer.toml

# Federation in one command: both loopback instances, the example component
# (examples/echo_component.rs) as echo.b.test, one message a.test -> b.test and its echo back;
# then everything is stopped. Fails (non-zero) if the echo does not come back. Needs ports 5269
# and 5347 on 127.0.0.1 and 127.0.0.2 free (stop `make run`/`make run-peer` first).
demo: build
	cargo build --release --locked --example echo_component
	examples/demo.sh

check-config: build
	./$(BIN) --check-config etc/dialbackd.toml
	./$(BIN) --check-config etc/peer.toml

lint:
	cargo fmt --all -- --check && cargo clippy --all-targets --locked -- -D warnings

doc:
	RUSTDOCFLAGS=-Dwarnings cargo doc --no-deps

# Needs a built binary (`make build` as your user first; then `sudo make install`).
# The example configuration is installed only when none exists, so an edited one is never
# overwritten. Installing to the live system (empty DESTDIR) also creates the `dialbackd` system
# user the unit runs as and lets its group read a newly installed configuration.
install:
	@test -x $(BIN) || { echo "$(BIN) is missing: run 'make build' first" >&2; exit 1; }
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)/etc/dialbackd $(DESTDIR)/lib/systemd/system
	install -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/dialbackd
	sed 's|/usr/local/bin/dialbackd|$(PREFIX)/bin/dialbackd|' etc/dialbackd.service > $(DESTDIR)/lib/systemd/system/dialbackd.service
	chmod 0644 $(DESTDIR)/lib/systemd/system/dialbackd.service
	@if [ -z "$(DESTDIR)" ] && ! getent passwd dialbackd >/dev/null; then \
		echo "useradd --system --user-group dialbackd"; \
		useradd --system --user-group --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin dialbackd; \
	fi
	test -f $(DESTDIR)/etc/dialbackd/dialbackd.toml || { install -m 0640 etc/dialbackd.toml $(DESTDIR)/etc/dialbackd/dialbackd.toml && if [ -z "$(DESTDIR)" ]; then chgrp dialbackd /etc/dialbackd/dialbackd.toml; fi; }

# Fuzzing (needs cargo-fuzz: `cargo install cargo-fuzz --locked`; stable toolchain, no
# sanitizer): every target in fuzz/ for FUZZ_SECONDS each (default 60), one after another,
# from the committed seeds; prints runs and findings and fails on any. See fuzz/run.sh.
.PHONY: fuzz
FUZZ_SECONDS ?= 60
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) fuzz/run.sh

clean:
	cargo clean

bench: setup
	benches/run.sh
