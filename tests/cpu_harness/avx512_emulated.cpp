// One AVX-512 kernel file (QK_EMULATED_SOURCE, e.g. "cpu/qlinear_avx512vnni.cpp") built against the
// scalar definitions of avx512_emulation.h, with the AVX2 flags only: the kernels' own code, unchanged,
// runs on an x86 CPU without AVX-512, so the harness can check its logic against the scalar kernels.
// Built and run by ci/avx512_emulated_test.sh.
#include <immintrin.h>

#include "avx512_emulation.h"

#ifndef QK_EMULATED_SOURCE
#error "define QK_EMULATED_SOURCE as the kernel file to build, e.g. -DQK_EMULATED_SOURCE='\"cpu/qlinear_avx512.cpp\"'"
#endif
#include QK_EMULATED_SOURCE
