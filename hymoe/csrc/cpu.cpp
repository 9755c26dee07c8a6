// Run-time ISA choice: one build carries every path; the CPU (and the OS, which must save the
// wide registers) decides which one runs, so no x86-64 ever sees an illegal instruction.
#include "common.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>

static uint64_t xgetbv0() {
    uint32_t eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((uint64_t)edx << 32) | eax;
}

// 2 = AVX512 F/BW/VL/VNNI, 1 = AVX2 + FMA + F16C, 0 = portable
int detect_isa() {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    bool osxsave = c & (1u << 27), fma = c & (1u << 12), f16c = c & (1u << 29), avx = c & (1u << 28);
    if (!(osxsave && avx)) return 0;
    uint64_t xcr0 = xgetbv0();
    bool ymm_ok = (xcr0 & 0x6) == 0x6, zmm_ok = (xcr0 & 0xe6) == 0xe6;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    bool avx2 = b & (1u << 5), avx512f = b & (1u << 16), avx512bw = b & (1u << 30),
         avx512vl = b & (1u << 31), vnni = c & (1u << 11);
    if (zmm_ok && avx512f && avx512bw && avx512vl && vnni && fma && f16c) return 2;
    if (ymm_ok && avx2 && fma && f16c) return 1;
    return 0;
}

// AVX512_BF16 (vdpbf16ps): Zen 4, Cooper Lake, Sapphire Rapids and later; on top of detect_isa() == 2
bool detect_avx512_bf16() {
    unsigned a, b, c, d;
    if (detect_isa() < 2 || !__get_cpuid_count(7, 1, &a, &b, &c, &d)) return false;
    return a & (1u << 5);
}

int detect_split_512() {
    unsigned a, b, c, d;
    if (detect_isa() < 2 || !__get_cpuid(0, &a, &b, &c, &d)) return 0;
    const bool amd = b == 0x68747541 && d == 0x69746e65 && c == 0x444d4163;  // "AuthenticAMD"
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    const unsigned family = ((a >> 8) & 0xf) + ((a >> 8 & 0xf) == 0xf ? (a >> 20) & 0xff : 0);
    return amd && family == 25;
}

int detect_full_512() { return detect_isa() == 2 && !detect_split_512(); }
#elif defined(__aarch64__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
// 1 = NEON with the dot-product instructions (sdot/udot), 0 = portable
int detect_isa() { return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) ? 1 : 0; }
bool detect_avx512_bf16() { return false; }
int detect_split_512() { return 0; }
int detect_full_512() { return 0; }
#else
int detect_isa() { return 0; }
bool detect_avx512_bf16() { return false; }
int detect_split_512() { return 0; }
int detect_full_512() { return 0; }
#endif
