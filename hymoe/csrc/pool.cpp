#include "pool.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
static inline void cpu_relax() { _mm_pause(); }
#else
static inline void cpu_relax() { std::this_thread::yield(); }
#endif

// Within a job, helpers spin between phases (they follow each other within microseconds); between
// jobs they sleep at once, so they never compete with torch's own threads for the cores while
// the dense part of the layer runs.
static const int kSpins = 100000;

Pool::Pool(int num_threads) : num_threads_(num_threads < 1 ? 1 : num_threads) {
    threads_.emplace_back([this] { driver_loop(); });
    for (int t = 1; t < num_threads_; t++) threads_.emplace_back([this, t] { helper_loop(t); });
}

Pool::~Pool() {
    {
        std::lock_guard<std::mutex> lock(job_mutex_);
        is_stopping_ = true;
    }
    job_cv_.notify_all();
    {
        std::lock_guard<std::mutex> lock(phase_mutex_);
        state_ += 1ull << 32;
    }
    phase_cv_.notify_all();
    for (auto& th : threads_) th.join();
}

void Pool::submit(std::function<void()> job) {
    sync();  // one job at a time
    std::lock_guard<std::mutex> lock(job_mutex_);
    job_ = std::move(job);
    has_job_ = true;
    is_job_done_ = false;
    job_cv_.notify_all();
}

void Pool::sync() {
    std::unique_lock<std::mutex> lock(job_mutex_);
    job_cv_.wait(lock, [this] { return is_job_done_; });
}

bool Pool::is_done() {
    std::lock_guard<std::mutex> lock(job_mutex_);
    return is_job_done_;
}

void Pool::run(const std::function<void()>& job) {
    sync();
    in_job_ = true;
    job();
    in_job_ = false;
}

void Pool::wake() {
    if (num_threads_ == 1) return;
    in_job_ = true;  // helpers spin, not sleep, once awake
    {
        std::lock_guard<std::mutex> lock(phase_mutex_);
        wake_seq_++;
    }
    phase_cv_.notify_all();
}

void Pool::driver_loop() {
    for (;;) {
        std::function<void()> job;
        {
            std::unique_lock<std::mutex> lock(job_mutex_);
            job_cv_.wait(lock, [this] { return has_job_ || is_stopping_; });
            if (is_stopping_) return;
            job = std::move(job_);
            has_job_ = false;
        }
        in_job_ = true;
        job();
        in_job_ = false;
        {
            std::lock_guard<std::mutex> lock(job_mutex_);
            is_job_done_ = true;
        }
        job_cv_.notify_all();
    }
}

void Pool::work(int thread, uint32_t generation) {
    for (;;) {
        uint64_t s = state_.load();
        if ((uint32_t)(s >> 32) != generation || (uint32_t)s >= (uint32_t)num_units_) return;
        if (!state_.compare_exchange_weak(s, s + 1)) continue;
        (*fn_)((int)(uint32_t)s, thread);
        units_done_++;
    }
}

void Pool::parallel_for(int num_units, const UnitFn& fn) {
    if (num_units <= 0) return;
    // Close the previous phase under a generation of its own (no units), so that no helper can pair
    // the old generation with the new function or unit count; then open the new one.
    uint32_t generation = (uint32_t)(state_.load() >> 32) + 2;
    state_ = ((uint64_t)(generation - 1) << 32) | 0xffffffffu;
    fn_ = &fn;
    num_units_ = num_units;
    units_done_ = 0;
    {
        std::lock_guard<std::mutex> lock(phase_mutex_);
        state_ = (uint64_t)generation << 32;  // unit 0 of the new phase
    }
    if (num_threads_ > 1) phase_cv_.notify_all();
    work(0, generation);
    while (units_done_.load() < num_units) cpu_relax();
}

void Pool::helper_loop(int thread) {
    uint32_t seen = 0;
    uint64_t woken = 0;
    for (;;) {
        int spins = 0;
        while ((uint32_t)(state_.load() >> 32) == seen && in_job_.load() && spins < kSpins) {
            cpu_relax();
            spins++;
        }
        if ((uint32_t)(state_.load() >> 32) == seen) {
            std::unique_lock<std::mutex> lock(phase_mutex_);
            phase_cv_.wait(lock, [&] { return (uint32_t)(state_.load() >> 32) != seen || wake_seq_ != woken; });
            woken = wake_seq_;
        }
        {
            std::lock_guard<std::mutex> lock(job_mutex_);
            if (is_stopping_) return;
        }
        if ((uint32_t)(state_.load() >> 32) == seen) continue;  // woken ahead of a job: spin until it starts
        seen = (uint32_t)(state_.load() >> 32);
        work(thread, seen);
    }
}
