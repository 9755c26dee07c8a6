// Top-k expert routing from router logits (route.cpp).
#pragma once
#include <stdint.h>

extern "C" {
// Mirrored by hymoe/experts/native_linear.py (ctypes.Structure): keep the field order.
struct RouteArgs {
    int32_t num_tokens, num_experts, topk;
    int32_t is_sigmoid;  // scores: sigmoid (DeepSeek-V3) or softmax
    int32_t group_rule;  // 0 none, 1 a group's best score (HF V2), 2 the sum of its best two (V3, GGUF)
    int32_t num_groups, topk_groups, is_norm;
    float scale;         // routed_scaling_factor
    const float* bias;   // [E] score-correction bias (chooses, never weighs), or null
    const float* logits; // [T, E]
    int64_t* ids;        // [T, K]
    float* weights;      // [T, K]
};
}

// ids and weights of each token's top-k experts; 0, or -1 for sizes that do not fit together
int route_tokens(const RouteArgs* a);
