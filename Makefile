# BrainMM: the commands a newcomer uses. The build itself is CMake's.
#   make          build the libraries (build/libbrainmm.so, build/libbrainmm.a)
#   make test     build and run every test: release, check (assertions and
#                 heap checks), ASan+UBSan and TSan flavours, and valgrind
#                 memcheck on a build that tells it about every block
#   make bench    build and run the side-by-side benchmark (QUICK=1: short)
#   make install  install into PREFIX (default /usr/local)
PREFIX ?= /usr/local
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE ?= cmake
CTEST ?= ctest
CC_SAN ?= $(shell command -v clang >/dev/null 2>&1 && echo clang || echo gcc)
CXX_SAN ?= $(shell command -v clang++ >/dev/null 2>&1 && echo clang++ || echo g++)

.PHONY: all build test test-release test-check test-asan test-tsan test-valgrind bench install clean format

all: build

build:
	$(CMAKE) -S . -B build -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=$(PREFIX) >/dev/null
	$(CMAKE) --build build -j $(JOBS)

# Each flavour builds in its own directory and runs the whole ctest suite.
define flavour
	$(CMAKE) -S . -B $(1) -DCMAKE_BUILD_TYPE=$(2) $(3) >/dev/null
	$(CMAKE) --build $(1) -j $(JOBS)
	cd $(1) && $(CTEST) --output-on-failure -j $(JOBS) $(4)
endef

test: test-release test-check test-asan test-tsan test-valgrind

test-release: build
	cd build && $(CTEST) --output-on-failure -j $(JOBS)

test-check:
	$(call flavour,build-check,Debug,-DBMM_DEBUG=2 -DBMM_BUILD_BENCH=OFF,)

test-asan:
	$(call flavour,build-asan,RelWithDebInfo,-DBMM_SANITIZE=address$(,)undefined -DCMAKE_C_COMPILER=$(CC_SAN) -DCMAKE_CXX_COMPILER=$(CXX_SAN) -DBMM_DEBUG=1,)

test-tsan:
	$(call flavour,build-tsan,RelWithDebInfo,-DBMM_SANITIZE=thread -DCMAKE_C_COMPILER=$(CC_SAN) -DCMAKE_CXX_COMPILER=$(CXX_SAN),)

# The memcheck test, and the whole suite on this build's own code (client
# requests, disguised page starts): about 20 s.
test-valgrind:
	$(call flavour,build-valgrind,RelWithDebInfo,-DBMM_VALGRIND=ON -DBMM_BUILD_BENCH=OFF,)

bench: build
	QUICK=$(QUICK) bash bench/run.sh
	QUICK=$(QUICK) bash bench/extras.sh

install: build
	$(CMAKE) --install build

format:
	clang-format -i $$(git ls-files '*.c' '*.h' '*.cpp')

clean:
	rm -rf build build-check build-asan build-tsan build-valgrind

, := ,
