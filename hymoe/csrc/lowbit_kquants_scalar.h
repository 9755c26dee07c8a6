// Portable decoders of Q2_K, Q3_K and IQ4_XS: 256-weight super-blocks with 4- or 6-bit sub-block scales.
// Contract: lowbit.h. Plain C++ (the portable path: any CPU).
#pragma once
#include "lowbit.h"

namespace {

// Q2_K and Q3_K share their 2-bit planes: weight 128h + 32s + i is bits 2s..2s+1 of qs[32h + i]
inline uint8_t k_low2(const uint8_t* qs, int k) {
    return (qs[32 * (k / 128) + k % 32] >> (2 * (k / 32 % 4))) & 3;
}

struct PQ2_K {  // value = d * (sc & 15) * q - dmin * (sc >> 4), one scale byte per block of 16
    static const bool kAct256 = true;  // per-256 activations (lowbit.h)
    static const int kUnit = 256, kBlock = 16, kBytes = sizeof(BlockQ2_K);
    static void decode(const uint8_t* p, uint8_t* codes, float* sc, float* mn) {
        const BlockQ2_K* b = (const BlockQ2_K*)p;
        for (int k = 0; k < 256; k++) codes[k] = k_low2(b->qs, k);
        const float d = fp16_to_f32(b->d), dmin = fp16_to_f32(b->dmin);
        for (int j = 0; j < 16; j++) sc[j] = d * (float)(b->scales[j] & 0xF), mn[j] = dmin * (float)(b->scales[j] >> 4);
    }
};

// Q3_K's 6-bit scale of block j (0-15): low nibble from byte j % 8 (j / 8 picks the nibble),
// high 2 bits from byte 8 + j % 4 (j / 4 picks the pair); stored biased by 32
inline int q3k_scale(const uint8_t* s, int j) {
    return (((s[j % 8] >> (4 * (j / 8))) & 0xF) | (((s[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
}

struct PQ3_K {  // value = d * (sc - 32) * (q - 4), q = 2 low bits | hmask bit << 2: code q, min 4 * scale
    static const bool kAct256 = true;  // per-256 activations (lowbit.h)
    static const int kUnit = 256, kBlock = 16, kBytes = sizeof(BlockQ3_K);
    static void decode(const uint8_t* p, uint8_t* codes, float* sc, float* mn) {
        const BlockQ3_K* b = (const BlockQ3_K*)p;
        for (int k = 0; k < 256; k++) codes[k] = k_low2(b->qs, k) | (((b->hmask[k % 32] >> (k / 32)) & 1) << 2);
        const float d = fp16_to_f32(b->d);
        for (int j = 0; j < 16; j++) sc[j] = d * (float)q3k_scale(b->scales, j), mn[j] = 4.f * sc[j];
    }
};

// IQ4_XS's 6-bit scale of block j (0-7): a nibble of scales_l, 2 bits of scales_h, biased by 32
inline int iq4xs_scale(const BlockIQ4_XS* b, int j) {
    return (((b->scales_l[j / 2] >> (4 * (j % 2))) & 0xF) | (((b->scales_h >> (2 * j)) & 3) << 4)) - 32;
}

struct PIQ4_XS {  // value = d * (ls - 32) * kIQ4Values[q]: code kIQ4Values[q] + 128, min 128 * scale
    static const int kUnit = 256, kBlock = 32, kBytes = sizeof(BlockIQ4_XS);
    static const bool kAct256 = true;  // per-256 activations (lowbit.h)
    static void decode(const uint8_t* p, uint8_t* codes, float* sc, float* mn) {
        const BlockIQ4_XS* b = (const BlockIQ4_XS*)p;
        const float d = fp16_to_f32(b->d);
        for (int j = 0; j < 8; j++) {  // block j: 16 bytes, low nibbles (weights 0-15) then high
            for (int i = 0; i < 16; i++) {
                codes[32 * j + i] = (uint8_t)(kIQ4Values[b->qs[16 * j + i] & 0xF] + 128);
                codes[32 * j + 16 + i] = (uint8_t)(kIQ4Values[b->qs[16 * j + i] >> 4] + 128);
            }
            sc[j] = d * (float)iq4xs_scale(b, j), mn[j] = 128.f * sc[j];
        }
    }
};

}  // namespace
