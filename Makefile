# `make all` builds the three programs and places them in the project root, like the original.
CARGO ?= cargo
BINS := client server coord

.PHONY: all test clean
all:
	$(CARGO) build --release --bins
	for b in $(BINS); do cp target/release/$$b ./$$b; done

test:
	$(CARGO) nextest run --no-fail-fast

clean:
	$(CARGO) clean
	rm -f $(BINS)
