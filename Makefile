# `make all` builds the three programs and places them in the project root, like the original.
CARGO ?= cargo
BINS := client server coord

.PHONY: all test clean
# Each program is copied to a temporary name and renamed over the old one: copying over a
# program that runs (the service is up) fails with "Text file busy", while a rename leaves
# the running process its old file.
all:
	$(CARGO) build --release --bins
	for b in $(BINS); do cp target/release/$$b ./.$$b.new && mv -f ./.$$b.new ./$$b || exit 1; done

# Installs missing test dependencies (scripts/test-deps.sh), then runs every test.
test:
	bash scripts/test-deps.sh
	$(CARGO) nextest run --no-fail-fast

clean:
	$(CARGO) clean
	rm -f $(BINS)
