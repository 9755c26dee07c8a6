// The kernels each ISA's files export, by ISA; dispatch.cpp says which of them computes what.
// Included by the ISA-specific translation units: declarations only, no inline code (common.h).
//
// A rows kernel computes rows [0, k) of a range against ntok activations (RowsFn, common.h) and
// returns k: every row, only whole tiles (a batch tile), or 0 for a shape it does not take (a row
// length its vectors do not divide, more tokens than its buffers hold). dispatch.cpp hands the
// rows it leaves to the next kernel. An attend kernel returns 0 for a head width it does not take.
#pragma once
#include "common.h"

namespace portable {  // kernels_generic.cpp: plain C++, every shape
extern const RowsFn rows_f32, rows_f16, rows_bf16, rows_q8_0, rows_q4_0, rows_q4_k, rows_q5_k, rows_q6_k,
    rows_iq1_s, rows_tq2_0, rows_tq1_0;
// kernels_generic_lowbit.cpp: the low-bit and older formats (lowbit.h)
extern const RowsFn rows_q4_1, rows_q5_0, rows_q5_1, rows_iq4_nl, rows_q2_k, rows_q3_k, rows_iq4_xs, rows_iq2_xxs, rows_iq2_xs, rows_iq2_s, rows_iq3_xxs, rows_iq3_s, rows_iq1_m;
extern const SiluMulFn silu_mul;
extern const AttendFn attend;
extern const ReadFn read;
extern const ToF16Fn to_f16;
extern const RowsFn rows_q4_k_g4;  // regroup.cpp: the rows back in Q4_K's layout, then the table's Q4_K
}  // namespace portable

#if defined(__x86_64__) || defined(_M_X64)
namespace avx2 {
// kernels_avx2.cpp: per-row kernels, one row against one token at a time; every shape
extern const RowsFn rows_f32, rows_f16, rows_bf16, rows_q8_0, rows_q4_0, rows_q4_k, rows_q5_k, rows_q6_k,
    rows_iq1_s, rows_tq2_0, rows_tq1_0;
// kernels_avx2_tiled.cpp: batch tiles of 16 rows (tiles.h); rows of 256s, up to 64 tokens
extern const RowsFn tile_q8_0, tile_q4_0, tile_q4_k, tile_q5_k, tile_q6_k, tile_iq1_s, tile_tq2_0, tile_tq1_0;
// kernels_avx2_float.cpp: float weights converted once into an f32 tile of 16 rows; n % 8 == 0
extern const RowsFn tile_f32, tile_f16, tile_bf16;
extern const AttendFn attend;  // kernels_avx2_attn.cpp: head widths of 8s
extern const ToF16Fn to_f16;  // kernels_avx2_attn.cpp: by F16C (vcvtps2ph)
// the low-bit and older formats (lowbit.h): per-row kernels decoding each
// row once per call (kernels_avx2_lowbit.cpp; rows of 256s) and batch tiles (kernels_avx2_tiled.cpp)
extern const RowsFn rows_q4_1, rows_q5_0, rows_q5_1, rows_iq4_nl, rows_q2_k, rows_q3_k, rows_iq4_xs, rows_iq2_xxs, rows_iq2_xs, rows_iq2_s, rows_iq3_xxs, rows_iq3_s, rows_iq1_m;
extern const RowsFn tile_q4_1, tile_q5_0, tile_q5_1, tile_iq4_nl, tile_q2_k, tile_q3_k, tile_iq4_xs, tile_iq2_xxs, tile_iq2_xs, tile_iq2_s, tile_iq3_xxs, tile_iq3_s, tile_iq1_m;
}  // namespace avx2

namespace avx512 {
// kernels_avx512.cpp: per-row kernels, each row's weights unpacked once for up to 4 tokens;
// rows of 16s (float) or 64s (quantized)
extern const RowsFn rows_f32, rows_f16, rows_bf16, rows_q8_0, rows_q4_0, rows_iq1_s;
// kernels_avx512_k.cpp: the formats of 256-weight blocks against per-256 activations
extern const RowsFn rows_q4_k, rows_q5_k, rows_q6_k, rows_tq2_0, rows_tq1_0, rows_q4_k_g4;
// kernels_avx512_tiled.cpp: batch tiles of 16 rows (tiles.h); rows of 256s, up to 64 tokens
extern const RowsFn tile_q8_0, tile_q4_0, tile_q4_k, tile_q5_k, tile_q6_k, tile_iq1_s, tile_tq2_0, tile_tq1_0,
    tile_q4_k_g4;
// kernels_avx512.cpp: its own activation layout (the portable one, extended) and helpers
extern const QuantizeFn quantize;
extern const ActBytesFn act_bytes;
extern const SiluMulFn silu_mul;
extern const ReadFn read;
extern const AttendFn attend;  // kernels_avx512_attn.cpp: head widths of 16s (of 8s with Tuning::attn_ymm)
// the low-bit and older formats (lowbit.h): per-row kernels
// (kernels_avx512_<group>.cpp; rows of 256s) and batch tiles (kernels_avx512_tiled.cpp)
extern const RowsFn rows_q4_1, rows_q5_0, rows_q5_1, rows_iq4_nl, rows_q2_k, rows_q3_k, rows_iq4_xs, rows_iq2_xxs, rows_iq2_xs, rows_iq2_s, rows_iq3_xxs, rows_iq3_s, rows_iq1_m;
extern const RowsFn rows_q4_0_units;  // kernels_avx512_legacy.cpp: Q4_0 rows of 256s (rows_q4_0 picks it)
extern const RowsFn tile_q4_1, tile_q5_0, tile_q5_1, tile_iq4_nl, tile_q2_k, tile_q3_k, tile_iq4_xs, tile_iq2_xxs, tile_iq2_xs, tile_iq2_s, tile_iq3_xxs, tile_iq3_s, tile_iq1_m;
}  // namespace avx512

namespace avx512_bf16 {
// kernels_avx512_bf16.cpp: BF16 batches by vdpbf16ps in tiles of 32 rows; n % 32 == 0, up to 64
// tokens. Null where the compiler lacked AVX512-BF16 (setup.py builds the file as a stub).
extern const RowsFn tile_bf16;
}  // namespace avx512_bf16
#endif

#if defined(__aarch64__)
namespace neon {
// kernels_neon.cpp: per-row kernels by NEON sdot (armv8.2-a+dotprod), portable activation layout
extern const RowsFn rows_q8_0, rows_q4_0, rows_q4_k, rows_q5_k, rows_q6_k, rows_iq1_s;
}  // namespace neon
#endif
