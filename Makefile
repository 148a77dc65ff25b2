# `make all` builds the three programs and places them in the project root, like the original.
CARGO ?= cargo
BINS := client server coord

.PHONY: all test clean
all:
	$(CARGO) build --release --bins
	for b in $(BINS); do cp target/release/$$b ./$$b; done

# Installs missing test dependencies (scripts/test-deps.sh), then runs every test.
test:
	bash scripts/test-deps.sh
	$(CARGO) nextest run --no-fail-fast

clean:
	$(CARGO) clean
	rm -f $(BINS)
