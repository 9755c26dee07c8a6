// AVX2 decoders of IQ3_XXS, IQ3_S and IQ1_M: 4-weight (IQ3) and 8-weight (IQ1_M) codebooks.
// Contract: lowbit.h; codes, scales and mins as their portable decoders (lowbit_iq3_scalar.h).
// AVX2/F16C intrinsics only; no C++ library (common.h).
#pragma once
#include "iq1s.h"
#include "lowbit.h"
#include "lowbit_iq3_scalar.h"
#include "tiles.h"

namespace {

// 32 sign bits -> 32 byte masks (0xFF where the bit is set): byte i tests bit i of the word
static inline __m256i iq3_sign_mask32(uint32_t s) {
    const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    const __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)s), spread);
    return _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
}

// 32 codes offset +- magnitude from 8 grid entries (m) and their sign bits
static inline __m256i iq3_signed32(__m256i m, uint32_t signs, int offset) {
    const __m256i o = _mm256_set1_epi8((char)offset);
    return _mm256_blendv_epi8(_mm256_add_epi8(o, m), _mm256_sub_epi8(o, m), iq3_sign_mask32(signs));
}

// the grid entries of 8 indices, two per qword (scalar loads: 4-byte entries do not vectorize)
template <class I>
static inline __m256i iq3_look8(const I* q, const uint32_t* grid) {
    auto pair = [grid, q](int k) -> long long { return (long long)(grid[q[k]] | (uint64_t)grid[q[k + 1]] << 32); };
    return _mm256_set_epi64x(pair(6), pair(4), pair(2), pair(0));
}

// IQ3_XXS's 32 sign bytes of a block, byte 4 ib + l for weights 32 ib + 8 l .. + 7, in one vector:
// each scale word's four 7-bit fields spread to its four bytes, then each byte's parity as bit 7
static inline __m256i iq3xxs_signs(const uint8_t* aux_bytes) {
    const __m256i aux = _mm256_loadu_si256((const __m256i*)aux_bytes);
    __m256i f = _mm256_and_si256(aux, _mm256_set1_epi32(0x7F));
    for (int l = 1; l < 4; l++)
        f = _mm256_or_si256(f, _mm256_and_si256(_mm256_slli_epi32(aux, l), _mm256_set1_epi32(0x7F << 8 * l)));
    // bit 0 of each byte ends as the parity of its 7 bits (bits from the next byte land above bit 3)
    __m256i q = _mm256_xor_si256(f, _mm256_srli_epi32(f, 4));
    q = _mm256_xor_si256(q, _mm256_srli_epi32(q, 2));
    q = _mm256_xor_si256(q, _mm256_srli_epi32(q, 1));
    return _mm256_or_si256(f, _mm256_slli_epi32(_mm256_and_si256(q, _mm256_set1_epi8(1)), 7));
}

struct DIQ3_XXS {  // codes 64 +- grid, scale db, min 64 db (PIQ3_XXS)
    static const int kBlock = 32, kBytes = sizeof(BlockIQ3_XXS), kMaxCode = 126;
    static void decode(const uint8_t* p, uint8_t* codes, float* sc, float* mn, int stride) {
        const BlockIQ3_XXS* b = (const BlockIQ3_XXS*)p;
        alignas(32) uint32_t sg[8];
        _mm256_store_si256((__m256i*)sg, iq3xxs_signs(b->qs + 64));
        for (int ib = 0; ib < 8; ib++)
            _mm256_storeu_si256((__m256i*)(codes + 32 * ib), iq3_signed32(iq3_look8(b->qs + 8 * ib, kIq3xxsGrid), sg[ib], 64));
        const __m256i aux8 = _mm256_loadu_si256((const __m256i*)(b->qs + 64));
        const __m256 ls = _mm256_add_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(aux8, 28)), _mm256_set1_ps(0.5f));
        const __m256 db = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(tile_h2f(b->d)), ls), _mm256_set1_ps(0.5f));
        store_scales8(db, _mm256_mul_ps(db, _mm256_set1_ps(64.f)), sc, mn, stride);
    }
};

struct DIQ3_S {  // codes 16 +- grid, scale d (1 + 2 s), min 16 times that (PIQ3_S)
    static const int kBlock = 32, kBytes = sizeof(BlockIQ3_S), kMaxCode = 31;
    static void decode(const uint8_t* p, uint8_t* codes, float* sc, float* mn, int stride) {
        const BlockIQ3_S* b = (const BlockIQ3_S*)p;
        // the 9-bit indices, 16 at a time: qh bit k of the pair's 16 bits -> 256 in lane k
        alignas(32) uint16_t idx[64];
        const __m256i bit = _mm256_setr_epi16(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, -32768);
        for (int h = 0; h < 4; h++) {
            uint16_t qh;
            memcpy(&qh, b->qh + 2 * h, 2);
            const __m256i hi = _mm256_and_si256(_mm256_cmpeq_epi16(_mm256_and_si256(_mm256_set1_epi16((short)qh), bit), bit),
                                                _mm256_set1_epi16(256));
            const __m256i lo = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)(b->qs + 16 * h)));
            _mm256_store_si256((__m256i*)(idx + 16 * h), _mm256_or_si256(lo, hi));
        }
        for (int ib = 0; ib < 8; ib++) {
            uint32_t s;
            memcpy(&s, b->signs + 4 * ib, 4);
            _mm256_storeu_si256((__m256i*)(codes + 32 * ib), iq3_signed32(iq3_look8(idx + 8 * ib, kIq3sGrid), s, 16));
        }
        uint32_t s4;
        memcpy(&s4, b->scales, 4);  // nibble j: block j
        const __m256i nib = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)s4), _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28)),
                                             _mm256_set1_epi32(15));
        const __m256 db = _mm256_mul_ps(_mm256_set1_ps(tile_h2f(b->d)),
                                        _mm256_cvtepi32_ps(_mm256_or_si256(_mm256_slli_epi32(nib, 1), _mm256_set1_epi32(1))));
        store_scales8(db, _mm256_mul_ps(db, _mm256_set1_ps(16.f)), sc, mn, stride);
    }
};

struct DIQ1_M {  // codes 8 (grid + 1) + 1 + 8 delta, scale dl / 8, min 9 dl / 8 (PIQ1_M)
    static const int kBlock = 16, kBytes = sizeof(BlockIQ1_M), kMaxCode = 18;
    static void decode(const uint8_t* p, uint8_t* codes, float* sc, float* mn, int stride) {
        const BlockIQ1_M* b = (const BlockIQ1_M*)p;
        // 16-bit lane g: the nibble of group g (qh[g / 2], low then high), 16 groups per vector
        alignas(32) uint16_t idx[32];
        const __m128i qh = _mm_loadu_si128((const __m128i*)b->qh);
        for (int h = 0; h < 2; h++) {
            const __m256i v = _mm256_cvtepu8_epi16(h ? _mm_unpackhi_epi8(qh, qh) : _mm_unpacklo_epi8(qh, qh));
            const __m256i nib = _mm256_blend_epi16(v, _mm256_srli_epi16(v, 4), 0xAA);
            const __m256i lo = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)(b->qs + 16 * h)));
            _mm256_store_si256((__m256i*)(idx + 16 * h),
                               _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(nib, _mm256_set1_epi16(7)), 8)));
        }
        // per qword (8 weights, one group): + 2 where the delta bit (bit 3 of the nibble) is clear
        const __m256i dbit = _mm256_setr_epi64x(8, 128, 2048, 32768);
        for (int j = 0; j < 8; j++) {
            uint16_t w;
            memcpy(&w, b->qh + 2 * j, 2);  // the nibbles of groups 4j..4j+3
            const __m256i plus = _mm256_cmpeq_epi64(_mm256_and_si256(_mm256_set1_epi64x(w), dbit), _mm256_setzero_si256());
            // grid + 1 is 0..2 per byte: times 8 by a shift, no carry between bytes
            const __m256i c = _mm256_slli_epi64(iq1s_codes32(idx + 4 * j), 3);
            _mm256_storeu_si256((__m256i*)(codes + 32 * j),
                                _mm256_add_epi8(c, _mm256_and_si256(plus, _mm256_set1_epi8(2))));
        }
        // scales: lane j = 3-bit field j % 4 of word j / 4, dl / 8 = d (2 s + 1) / 8
        const __m128i w = _mm_loadl_epi64((const __m128i*)b->scales);
        const __m256 d8 = _mm256_set1_ps(0.125f * tile_h2f(iq1m_d(b)));
        for (int h = 0; h < 2; h++) {
            const __m256i wd = _mm256_cvtepu16_epi32(_mm_shuffle_epi8(w, h ? _mm_setr_epi8(4, 5, 4, 5, 4, 5, 4, 5, 6, 7, 6, 7, 6, 7, 6, 7)
                                                                        : _mm_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3, 2, 3)));
            const __m256i f = _mm256_and_si256(_mm256_srlv_epi32(wd, _mm256_setr_epi32(0, 3, 6, 9, 0, 3, 6, 9)), _mm256_set1_epi32(7));
            const __m256 dl = _mm256_mul_ps(d8, _mm256_cvtepi32_ps(_mm256_or_si256(_mm256_slli_epi32(f, 1), _mm256_set1_epi32(1))));
            store_scales8(dl, _mm256_mul_ps(dl, _mm256_set1_ps(9.f)), sc + 8 * h * stride, mn + 8 * h * stride, stride);
        }
    }
};

}  // namespace
