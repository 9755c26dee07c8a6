// AVX512 per-row kernels of Q4_1, Q5_0, Q5_1, IQ4_NL (lowbit.h) and of Q4_0 in units of 256: each format's own F struct (rows_avx512.h). Compiled
// with the AVX512 flags only; no C++ library (common.h).
//
// All are blocks of 32 with an fp16 scale at the block's start, taken 8 blocks (256 weights)
// a unit so a unit's scales (and mins) are one vector: its fp16 words are picked out of two or three
// 64-byte loads of the unit by vpermt2w and converted at once (an 8-dword gather cost more: Q4_1).
// A chunk of 64 weights is blocks 2c and 2c + 1, their nibbles in Q4_0's order. The unit's scales
// are multiplied by the activations' once a unit, not once a chunk (kUnitScales).
#if defined(__x86_64__) || defined(_M_X64)
#include "kernels.h"
#include "lowbit_legacy.h"
#include "rows_avx512.h"

namespace {

// fp16 words of a unit as 16 floats: lane l takes word idx[l] of the pair (load at p, load at
// p + at), a word index 32 + i meaning word i of the second load (vpermt2w's numbering)
inline __m512 unit_halves(const uint8_t* p, int at, __m256i idx) {
    const __m512i v = _mm512_permutex2var_epi16(_mm512_loadu_si512(p), _mm512_castsi256_si512(idx),
                                                _mm512_loadu_si512(p + at));
    return _mm512_cvtph_ps(_mm512_castsi512_si256(v));
}
// the same where the words span three loads: lanes in `late` take word idx2[l] of the load at p + at2
inline __m512 unit_halves3(const uint8_t* p, int at, __m256i idx, int at2, __mmask32 late, __m256i idx2) {
    __m512i v = _mm512_permutex2var_epi16(_mm512_loadu_si512(p), _mm512_castsi256_si512(idx), _mm512_loadu_si512(p + at));
    v = _mm512_mask_permutexvar_epi16(v, late, _mm512_castsi256_si512(idx2), _mm512_loadu_si512(p + at2));
    return _mm512_cvtph_ps(_mm512_castsi512_si256(v));
}

// the 64 nibbles of two blocks' qs in k order: 128-bit lanes [lo0 hi0 lo1 hi1]
inline __m512i nibbles64(const uint8_t* qs0, const uint8_t* qs1) {
    const __m512i shift = _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0);
    __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)qs0))),
                                   _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)qs1)), 1);
    return _mm512_and_si512(_mm512_srlv_epi64(v, shift), _mm512_set1_epi8(0x0F));
}
// Q5_0/Q5_1: the fifth bit of weight i of the pair is bit i of the two qh dwords, which is the
// byte order of nibbles64: one mask, one masked add
inline __m512i with_fifth_bits(__m512i codes, const uint8_t* qh0, const uint8_t* qh1) {
    uint32_t h0, h1;
    memcpy(&h0, qh0, 4);
    memcpy(&h1, qh1, 4);
    const __mmask64 k = _cvtu64_mask64((uint64_t)h0 | (uint64_t)h1 << 32);
    return _mm512_mask_add_epi8(codes, k, codes, _mm512_set1_epi8(16));
}

// Q4_1: Q4_0's nibbles with a min per block (value = d * q + m). d and m of block j are words
// 10j and 10j + 1: blocks 0-3 in the load at byte 0, 4-7 in the one at byte 80 (words 40-71)
struct FQ4_1 {
    static const int kDecodeRows = 1;  // one row a pass for one token streams best (decode_rows_of)
    static constexpr int blk_lo(int c) { return 2 * c; }
    static constexpr int blk_hi(int c) { return 2 * c + 1; }
    static const int kSU = 256, kBytes = 8 * sizeof(BlockQ4_1), kShift = -1;
    static const bool kMins = true, kPrepAhead = false, kUnitScales = true;
    const BlockQ4_1* b;
    __m512 dm;  // lanes 0-7: the 8 blocks' scales, 8-15: their mins
    void prep(const uint8_t* p) {
        b = (const BlockQ4_1*)p;
        dm = unit_halves(p, 80, _mm256_setr_epi16(0, 10, 20, 30, 32, 42, 52, 62, 1, 11, 21, 31, 33, 43, 53, 63));
    }
    __m512i chunk(int c, __m512&) const {  // kUnitScales: no lane scales
        return nibbles64(b[2 * c].qs, b[2 * c + 1].qs);
    }
    __m512 scales() const { return dm; }
    __m256 mins() const { return _mm256_sub_ps(_mm256_setzero_ps(), _mm512_extractf32x8_ps(dm, 1)); }
};

// Q5_0: value = d * (q - 16), the code offset 16 (kShift 4). d of block j is word 11j: blocks
// 0-2 in the load at byte 0, 3-5 at byte 64 (words 32-63), 6-7 at byte 112 (words 56-87)
struct FQ5_0 {
    static const int kDecodeRows = 1;  // one row a pass for one token streams best (decode_rows_of)
    static constexpr int blk_lo(int c) { return 2 * c; }
    static constexpr int blk_hi(int c) { return 2 * c + 1; }
    static const int kSU = 256, kBytes = 8 * sizeof(BlockQ5_0), kShift = 4;
    static const bool kMins = false, kPrepAhead = false, kUnitScales = true;
    const BlockQ5_0* b;
    __m512 d8;  // lanes 0-7: the 8 blocks' scales
    void prep(const uint8_t* p) {
        b = (const BlockQ5_0*)p;
        d8 = unit_halves3(p, 64, _mm256_setr_epi16(0, 11, 22, 33, 44, 55, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), 112, 0xC0,
                          _mm256_setr_epi16(0, 0, 0, 0, 0, 0, 10, 21, 0, 0, 0, 0, 0, 0, 0, 0));
    }
    __m512i chunk(int c, __m512&) const {  // kUnitScales: no lane scales
        return with_fifth_bits(nibbles64(b[2 * c].qs, b[2 * c + 1].qs), b[2 * c].qh, b[2 * c + 1].qh);
    }
    __m512 scales() const { return d8; }
    __m256 mins() const { return _mm256_setzero_ps(); }
};

// Q5_1: value = d * q + m, q as Q5_0's. d and m of block j are words 12j and 12j + 1: blocks 0-2
// in the load at byte 0, 3-5 at byte 64 (words 32-63), 6-7 at byte 128 (words 64-95)
struct FQ5_1 {
    static const int kDecodeRows = 1;  // one row a pass for one token streams best (decode_rows_of)
    static constexpr int blk_lo(int c) { return 2 * c; }
    static constexpr int blk_hi(int c) { return 2 * c + 1; }
    static const int kSU = 256, kBytes = 8 * sizeof(BlockQ5_1), kShift = -1;
    static const bool kMins = true, kPrepAhead = false, kUnitScales = true;
    const BlockQ5_1* b;
    __m512 dm;  // lanes 0-7: the 8 blocks' scales, 8-15: their mins
    void prep(const uint8_t* p) {
        b = (const BlockQ5_1*)p;
        dm = unit_halves3(p, 64, _mm256_setr_epi16(0, 12, 24, 36, 48, 60, 0, 0, 1, 13, 25, 37, 49, 61, 0, 0), 128, 0xC0C0,
                          _mm256_setr_epi16(0, 0, 0, 0, 0, 0, 8, 20, 0, 0, 0, 0, 0, 0, 9, 21));
    }
    __m512i chunk(int c, __m512&) const {  // kUnitScales: no lane scales
        return with_fifth_bits(nibbles64(b[2 * c].qs, b[2 * c + 1].qs), b[2 * c].qh, b[2 * c + 1].qh);
    }
    __m512 scales() const { return dm; }
    __m256 mins() const { return _mm256_sub_ps(_mm256_setzero_ps(), _mm512_extractf32x8_ps(dm, 1)); }
};

// Q4_0 and IQ4_NL, one block layout (an fp16 d, 16 bytes of nibbles): d of block j is word 9j, blocks
// 0-3 in the load at byte 0, 4-7 at byte 64. Q4_0 (kLookup false): value = d * (q - 8), the code
// offset 8 (kShift 3); here only rows of whole units (kernels_avx512.cpp takes the others 64 weights
// a unit). IQ4_NL: value = d * kIQ4Values[q]; the code is the value + 128 (kShift 7), looked up by
// vpshufb from the nibble.
template <bool kLookup>
struct FNibbles32 {
    static const int kDecodeRows = 1;  // one row a pass for one token streams best (decode_rows_of)
    static constexpr int blk_lo(int c) { return 2 * c; }
    static constexpr int blk_hi(int c) { return 2 * c + 1; }
    static const int kSU = 256, kBytes = 8 * sizeof(BlockQ4_0), kShift = kLookup ? 7 : 3;
    static const bool kMins = false, kPrepAhead = false, kUnitScales = true;
    const BlockQ4_0* b;
    __m512 d8;  // lanes 0-7: the 8 blocks' scales
    void prep(const uint8_t* p) {
        b = (const BlockQ4_0*)p;
        d8 = unit_halves(p, 64, _mm256_setr_epi16(0, 9, 18, 27, 36, 45, 54, 63, 0, 0, 0, 0, 0, 0, 0, 0));
    }
    __m512i chunk(int c, __m512&) const {  // kUnitScales: no lane scales
        const __m512i q = nibbles64(b[2 * c].qs, b[2 * c + 1].qs);
        if (!kLookup) return q;
        // value + 128 as a byte is the value's byte with its top bit flipped
        const __m512i table = _mm512_xor_si512(_mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i*)kIQ4Values)),
                                               _mm512_set1_epi8((char)0x80));
        return _mm512_shuffle_epi8(table, q);
    }
    __m512 scales() const { return d8; }
    __m256 mins() const { return _mm256_setzero_ps(); }
};
static_assert(sizeof(BlockQ4_0) == sizeof(BlockIQ4_NL), "Q4_0 and IQ4_NL share FNibbles32");

}  // namespace

const RowsFn avx512::rows_q4_0_units = rows_q<FNibbles32<false>>;
const RowsFn avx512::rows_q4_1 = rows_q<FQ4_1>;
const RowsFn avx512::rows_q5_0 = rows_q<FQ5_0>;
const RowsFn avx512::rows_q5_1 = rows_q<FQ5_1>;
const RowsFn avx512::rows_iq4_nl = rows_q<FNibbles32<true>>;
#endif
