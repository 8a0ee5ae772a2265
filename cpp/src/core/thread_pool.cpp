// core/thread_pool.cpp — a fixed pool of workers fed one parallel_for job at a time.
//
// A job is split into at most 4 chunks per thread (so uneven chunks even out); workers and the
// caller take chunks from an atomic counter. Which thread computes a chunk never changes its
// result: kernels write disjoint outputs.
#include "core/thread_pool.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "nybble/error.hpp"

namespace nybble::core {
namespace {

thread_local bool t_inside_job = false;

class Pool {
 public:
  Pool() : wanted_(std::max(1u, std::thread::hardware_concurrency())) {}
  ~Pool() { stop_workers(); }

  void set_threads(int n) {
    std::lock_guard<std::mutex> run(run_mutex_);
    stop_workers();
    wanted_ = static_cast<unsigned>(n);
  }
  int threads() const { return static_cast<int>(wanted_); }

  void run(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
    if (n <= 0) return;
    grain = std::max<int64_t>(grain, 1);
    const int64_t max_chunks = (n + grain - 1) / grain;
    if (wanted_ <= 1 || max_chunks <= 1 || t_inside_job) {
      fn(0, n);
      return;
    }
    std::lock_guard<std::mutex> run(run_mutex_);  // one job at a time
    start_workers();
    const int64_t chunks = std::min<int64_t>(max_chunks, int64_t{4} * wanted_);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      fn_ = &fn;
      n_ = n;
      chunks_ = chunks;
      next_.store(0);
      done_ = 0;
      error_ = nullptr;
      ++generation_;
    }
    wake_.notify_all();
    t_inside_job = true;
    work();
    t_inside_job = false;
    std::unique_lock<std::mutex> lock(mutex_);
    finished_.wait(lock, [&] { return done_ == chunks_; });
    fn_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void work() {
    for (;;) {
      const int64_t c = next_.fetch_add(1);
      if (c >= chunks_) return;
      const int64_t begin = n_ * c / chunks_, end = n_ * (c + 1) / chunks_;
      try {
        (*fn_)(begin, end);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!error_) error_ = std::current_exception();
      }
      std::lock_guard<std::mutex> lock(mutex_);
      if (++done_ == chunks_) finished_.notify_one();
    }
  }

  void worker_loop() {
    t_inside_job = true;  // a kernel that calls parallel_for again runs its loop serially
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
      }
      work();
    }
  }

  void start_workers() {
    if (!workers_.empty()) return;
    stop_ = false;
    for (unsigned i = 1; i < wanted_; ++i) workers_.emplace_back([this] { worker_loop(); });
  }
  void stop_workers() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  unsigned wanted_;
  std::vector<std::thread> workers_;
  std::mutex run_mutex_, mutex_;
  std::condition_variable wake_, finished_;
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0, chunks_ = 0, done_ = 0;
  std::atomic<int64_t> next_{0};
  uint64_t generation_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
};

Pool& pool() {
  static Pool p;
  return p;
}

}  // namespace

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  pool().run(n, grain, fn);
}

void set_num_threads(int n) {
  if (n < 1) throw Error(ErrorKind::Value, "set_num_threads: n = " + std::to_string(n) + " must be >= 1");
  pool().set_threads(n);
}

int num_threads() { return pool().threads(); }

}  // namespace nybble::core
