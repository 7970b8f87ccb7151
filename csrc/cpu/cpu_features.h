// Runtime CPU feature detection and the instruction-set choice for the CPU kernels.
//
// The chosen ISA is computed once: the best path the CPU *and* the OS support (cpuid plus XCR0 on
// x86, so AVX-512 state the OS does not save is never used; hwcaps on ARM), lowered by the
// environment variable QUANTKERNELS_CPU_ISA=scalar|avx2|avx_vnni|avx512|avx512_vnni|neon|... when set.
// Asking for a path the machine cannot run, or for an unknown name, falls back to the best it can
// (never SIGILL); isa_env_status() says which happened, and the Python loader warns about it.
#pragma once

namespace qk::cpu {

enum class Isa : int {
  kScalar = 0,
  kAvx2 = 1,         // AVX2 + FMA + F16C
  kAvx512 = 2,       // AVX-512 F/BW/VL/DQ
  kAvx512Vnni = 3,   // AVX-512 + VNNI (+ BF16 when present)
  kAvxVnni = 4,      // AVX2 + AVX-VNNI (256-bit vpdpbusd, VEX-encoded)
  kNeon = 10,        // ARMv8.2 NEON + dotprod
  kI8mm = 11,        // NEON + i8mm
};

// Every instruction set, in the order the names are listed (scalar, x86 low to high, then ARM).
inline constexpr Isa kAllIsas[] = {Isa::kScalar, Isa::kAvx2,  Isa::kAvxVnni, Isa::kAvx512,
                                   Isa::kAvx512Vnni, Isa::kNeon, Isa::kI8mm};

struct Features {
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;
  bool avx512vnni = false, avx512bf16 = false, avxvnni = false;
  bool neon = false, dotprod = false, i8mm = false;
  // Arithmetic on denormal operands at full speed: AMD and Hygon x86 cores. Intel cores take a
  // microcode assist per denormal operand (the AVX2 GEMV, which reads 4-bit codes as denormal
  // floats, ran 100x slower on an Intel Xeon: benchmarks/NOTES_cpu.md, session 22), so the kernels
  // that rely on denormals use them only where this is set.
  bool fast_denormals = false;
};

const Features& features();       // what the CPU and OS support
Isa best_supported_isa();          // ignoring the environment
Isa selected_isa();                // after QUANTKERNELS_CPU_ISA; computed once
bool isa_supported(Isa isa);
const char* isa_name(Isa isa);
// Parses a name as accepted by QUANTKERNELS_CPU_ISA; returns false if unknown.
bool parse_isa(const char* name, Isa* out);
// What became of QUANTKERNELS_CPU_ISA: "unset", "used", "unknown" (not an ISA name) or "unsupported"
// (a path this CPU/OS cannot run); in the last two cases selected_isa() is the best supported one.
const char* isa_env_status();

}  // namespace qk::cpu
