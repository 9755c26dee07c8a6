// The decoder contract of the formats of llama.cpp's low-bit mixes and older files (Q2_K, Q3_K,
// IQ4_XS, IQ4_NL, Q4_1, Q5_0, Q5_1, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_M). Each format is
// a decoder, one for the portable path and one in AVX2 intrinsics, and generic kernels do the rest:
// kernels_generic_lowbit.cpp (portable), kernels_avx2_lowbit.cpp (per-row, decode), the batch tiles
// of tiles.h (kernels_avx2_tiled.cpp, kernels_avx512_tiled.cpp). On AVX512 per row each format has
// its own F struct of rows_avx512.h (kernels_avx512_<group>.cpp; Q2_K, Q3_K in kernels_avx512_k.cpp):
// a generic one decoding through memory read Q4_1 at ~0.4 of the bandwidth at batch 1, the F struct ~0.9.
//
// A decoder turns one unit of a row into byte codes, in k order, with a float scale and min per
// block of kBlock weights (16 or 32), so that value = scale * code - min:
//
//   portable (lowbit_*_scalar.h):  struct P<FMT> {
//       static const int kUnit;    // weights per decode() call: 32 or 256
//       static const int kBlock;   // 16 or 32
//       static const int kBytes;   // bytes of one unit
//       static void decode(const uint8_t* p, uint8_t* codes, float* sc, float* mn);  // kUnit codes,
//   };                                                                               // kUnit / kBlock scales and mins
//   AVX2 (lowbit_*.h, as tiles.h's):  struct D<FMT> {
//       static const int kBlock, kBytes;  // kBytes: of 256 weights (8 blocks of a 32-weight format)
//       static const int kMaxCode; // the largest code decode() writes (AVX2 picks its integer path by it)
//       static void decode(const uint8_t* p, uint8_t* codes, float* sc, float* mn, int stride);
//   };                         // 256 codes; scale and min of block j at sc[j * stride], mn[j * stride]
//
// Activations: int8 per 32 with one float scale (the portable layout's qs, d, sum16) for most of
// these formats; a decoder with `static const bool kAct256 = true;` (Q2_K, Q3_K, IQ4_XS) takes the per-256
// ones instead (qk, dk and the int16 sums bk16 / bk32: ggml's Q8_K, what llama.cpp multiplies the
// K-quants by), on every path (portable, AVX2 per row, the batch tiles, AVX512 per row), so the paths
// agree with each other and with llama.cpp to float rounding, and AVX512 applies the sub-block scales
// in integer arithmetic (kernels_avx512_k.cpp), the float work once per 256 weights. The formats
// still on per-32 activations agree with llama.cpp to the activation rounding only
// (tests/test_llama_peer.py bounds).
#pragma once
#include "common.h"

// IQ4_NL and IQ4_XS: the 16 values a 4-bit code stands for (ggml's kvalues_iq4nl)
// whether decoder D takes per-256 activations (its kAct256; false where it has none)
template <class D, class = void>
struct Act256Of {
    static const bool value = false;
};
template <class D>
struct Act256Of<D, decltype((void)D::kAct256)> {
    static const bool value = D::kAct256;
};

static const int8_t kIQ4Values[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
