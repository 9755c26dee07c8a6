#include "pool.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
static inline void cpu_relax() { _mm_pause(); }
#else
static inline void cpu_relax() { std::this_thread::yield(); }
#endif

// Helpers spin this many checks before sleeping: phases of one job follow each other within
// microseconds, while the gap between layers (attention on the GPU or in torch) is longer.
static const int kSpins = 20000;

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
        generation_++;
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
        job();
        {
            std::lock_guard<std::mutex> lock(job_mutex_);
            is_job_done_ = true;
        }
        job_cv_.notify_all();
    }
}

void Pool::work(int thread) {
    for (int u; (u = next_unit_.fetch_add(1)) < num_units_;) (*fn_)(u, thread);
}

void Pool::parallel_for(int num_units, const UnitFn& fn) {
    if (num_units <= 0) return;
    fn_ = &fn;
    num_units_ = num_units;
    next_unit_ = 0;
    int helpers = num_threads_ - 1;
    if (helpers > 0) {
        pending_helpers_ = helpers;
        {
            std::lock_guard<std::mutex> lock(phase_mutex_);
            generation_++;
        }
        phase_cv_.notify_all();
    }
    work(0);
    while (pending_helpers_.load() > 0) cpu_relax();
}

void Pool::helper_loop(int thread) {
    uint64_t seen = 0;
    for (;;) {
        int spins = 0;
        while (generation_.load() == seen && spins < kSpins) {
            cpu_relax();
            spins++;
        }
        if (generation_.load() == seen) {
            std::unique_lock<std::mutex> lock(phase_mutex_);
            phase_cv_.wait(lock, [&] { return generation_.load() != seen; });
        }
        seen = generation_.load();
        {
            std::lock_guard<std::mutex> lock(job_mutex_);
            if (is_stopping_) return;
        }
        work(thread);
        pending_helpers_--;
    }
}
