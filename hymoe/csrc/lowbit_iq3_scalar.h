// Portable decoders of IQ3_XXS, IQ3_S and IQ1_M: 4-weight (IQ3) and 8-weight (IQ1_M) codebooks.
// Contract: lowbit.h. Plain C++ (the portable path: any CPU).
//
// The IQ3 grids hold magnitudes and the signs come apart, so a code is the signed value plus an
// offset (64 for IQ3_XXS, whose magnitudes reach 62; 16 for IQ3_S, 15) and the min is the offset
// times the scale. IQ1_M's value dl * (grid + delta), delta +-1/8 per 8 weights, is dl / 8 times
// 8 * grid +- 1: code 8 * (grid + 1) + 1 +- 1 (0..18), min 9 * dl / 8, exact per block of 16.
#pragma once
#include "iq1s_grid.h"
#include "lowbit.h"
#include "lowbit_iq3_grids.h"

namespace {

// IQ3_XXS's 7-bit sign fields: the 8th sign is the parity of the other 7 (ggml's ksigns)
static inline uint8_t iq3_ksign(uint32_t s7) {
    uint32_t p = s7 ^ (s7 >> 4);
    p ^= p >> 2;
    p ^= p >> 1;
    return (uint8_t)(s7 | (p & 1) << 7);
}

// four codes offset + sign * magnitude from a grid entry and four sign bits
static inline void iq3_put4(uint8_t* c, uint32_t g, uint32_t signs, int offset) {
    for (int k = 0; k < 4; k++) {
        const int m = (g >> 8 * k) & 0xFF;
        c[k] = (uint8_t)((signs >> k) & 1 ? offset - m : offset + m);
    }
}

struct PIQ3_XXS {  // per 32: a uint32 of four 7-bit sign fields and a 4-bit scale; value = db * +-grid
    static const int kUnit = 256, kBlock = 32, kBytes = sizeof(BlockIQ3_XXS);
    static void decode(const uint8_t* p, uint8_t* codes, float* sc, float* mn) {
        const BlockIQ3_XXS* b = (const BlockIQ3_XXS*)p;
        const float d = fp16_to_f32(b->d);
        for (int ib = 0; ib < 8; ib++) {
            uint32_t aux;
            memcpy(&aux, b->qs + 64 + 4 * ib, 4);
            for (int l = 0; l < 4; l++) {
                const uint32_t s = iq3_ksign((aux >> 7 * l) & 127);
                uint8_t* c = codes + 32 * ib + 8 * l;
                iq3_put4(c, kIq3xxsGrid[b->qs[8 * ib + 2 * l]], s, 64);
                iq3_put4(c + 4, kIq3xxsGrid[b->qs[8 * ib + 2 * l + 1]], s >> 4, 64);
            }
            sc[ib] = d * (0.5f + (float)(aux >> 28)) * 0.5f;
            mn[ib] = 64.f * sc[ib];
        }
    }
};

struct PIQ3_S {  // 9-bit indices (qs, qh), a sign bit per weight, 4-bit scales: db = d * (1 + 2 s)
    static const int kUnit = 256, kBlock = 32, kBytes = sizeof(BlockIQ3_S);
    static void decode(const uint8_t* p, uint8_t* codes, float* sc, float* mn) {
        const BlockIQ3_S* b = (const BlockIQ3_S*)p;
        const float d = fp16_to_f32(b->d);
        for (int ib = 0; ib < 8; ib++) {
            for (int k = 0; k < 8; k++) {
                const int idx = b->qs[8 * ib + k] | ((b->qh[ib] >> k) & 1) << 8;
                iq3_put4(codes + 32 * ib + 4 * k, kIq3sGrid[idx], b->signs[4 * ib + k / 2] >> 4 * (k & 1), 16);
            }
            sc[ib] = d * (float)(1 + 2 * ((b->scales[ib / 2] >> 4 * (ib & 1)) & 15));
            mn[ib] = 16.f * sc[ib];
        }
    }
};

// IQ1_M's fp16 super-block scale, one nibble in the top of each of its four scale words
static inline uint16_t iq1m_d(const BlockIQ1_M* b) {
    uint16_t w[4];
    memcpy(w, b->scales, 8);
    return (uint16_t)((w[0] >> 12) | ((w[1] >> 8) & 0xF0) | ((w[2] >> 4) & 0xF00) | (w[3] & 0xF000));
}

struct PIQ1_M {  // 11-bit indices (qs, 3 bits of a qh nibble), delta sign in the nibble's bit 3
    static const int kUnit = 256, kBlock = 16, kBytes = sizeof(BlockIQ1_M);
    static void decode(const uint8_t* p, uint8_t* codes, float* sc, float* mn) {
        const BlockIQ1_M* b = (const BlockIQ1_M*)p;
        for (int g = 0; g < 32; g++) {
            const int nib = (b->qh[g / 2] >> 4 * (g & 1)) & 15;
            const uint64_t e = kIq1sGrid[b->qs[g] | (nib & 7) << 8];
            const int one_plus = nib & 8 ? 0 : 2;  // 1 + 8 * delta
            for (int k = 0; k < 8; k++) codes[8 * g + k] = (uint8_t)(8 * ((int8_t)(e >> 8 * k) + 1) + one_plus);
        }
        const float d = fp16_to_f32(iq1m_d(b));
        uint16_t w[4];
        memcpy(w, b->scales, 8);
        for (int j = 0; j < 16; j++) {
            sc[j] = d * (float)(2 * ((w[j / 4] >> 3 * (j % 4)) & 7) + 1) * 0.125f;
            mn[j] = 9.f * sc[j];
        }
    }
};

}  // namespace
