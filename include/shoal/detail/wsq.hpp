// shoal/detail/wsq.hpp — the work-stealing deque under shoal::ThreadPool.
//
// Chase & Lev, "Dynamic Circular Work-Stealing Deque", SPAA 2005, with the
// memory orders of Lê, Pop, Cohen & Zappa Nardelli, "Correct and Efficient
// Work-Stealing for Weak Memory Models", PPoPP 2013. Where that paper puts a
// standalone seq_cst fence between a store and a load, we make the two
// operations themselves seq_cst instead: same guarantee (they join the single
// total order), same cost on x86 (xchg instead of mov+mfence), and ThreadSanitizer,
// which does not model fences, sees the synchronisation.
//
//        owner: push/pop at the bottom          thieves: steal at the top
//   top ->[ t | t+1 | ... | b-1 ]<- bottom
//
// One owner thread calls push() and pop(); any thread may call steal().
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

namespace shoal::detail {

template <class T>  // T: a pointer type (the deque never owns what it points to)
class WorkStealingDeque {
  static_assert(std::is_pointer_v<T>, "WorkStealingDeque holds pointers");

  struct Array {
    explicit Array(std::int64_t capacity)
        : mask(capacity - 1), slots(new std::atomic<T>[static_cast<std::size_t>(capacity)]) {}
    std::int64_t capacity() const noexcept { return mask + 1; }
    // Slots are atomics because a thief may read a slot the owner is about to
    // overwrite after wrap-around; the thief's CAS on top_ then fails and the
    // value it read is discarded. Relaxed is enough: the element's publication
    // is ordered by bottom_ (release in push, acquire in steal).
    void put(std::int64_t i, T x) noexcept { slots[i & mask].store(x, std::memory_order_relaxed); }
    T get(std::int64_t i) const noexcept { return slots[i & mask].load(std::memory_order_relaxed); }
    Array* grow(std::int64_t top, std::int64_t bottom) const {
      auto* a = new Array(2 * capacity());
      for (std::int64_t i = top; i < bottom; ++i) a->put(i, get(i));
      return a;
    }
    std::int64_t mask;
    std::unique_ptr<std::atomic<T>[]> slots;
  };

 public:
  explicit WorkStealingDeque(std::int64_t capacity = 256) : array_(new Array(capacity)) {
    garbage_.emplace_back(array_.load(std::memory_order_relaxed));
  }
  WorkStealingDeque(const WorkStealingDeque&) = delete;
  WorkStealingDeque& operator=(const WorkStealingDeque&) = delete;

  // Owner only.
  void push(T x) {
    std::int64_t b = bottom_.load(std::memory_order_relaxed);
    std::int64_t t = top_.load(std::memory_order_acquire);
    Array* a = array_.load(std::memory_order_relaxed);
    if (b - t > a->capacity() - 1) {
      a = a->grow(t, b);
      garbage_.emplace_back(a);  // old arrays stay alive: a thief may still read one
      array_.store(a, std::memory_order_release);
    }
    a->put(b, x);
    // release: a thief that reads the new bottom sees the element and
    // everything the owner wrote into the object it points to.
    bottom_.store(b + 1, std::memory_order_release);
  }

  // Owner only. Returns nullptr when empty.
  T pop() {
    std::int64_t b = bottom_.load(std::memory_order_relaxed) - 1;
    Array* a = array_.load(std::memory_order_relaxed);
    // seq_cst store then seq_cst load of top_: the StoreLoad order the paper's
    // fence provides, so owner and thief cannot both take the last element.
    bottom_.store(b, std::memory_order_seq_cst);
    std::int64_t t = top_.load(std::memory_order_seq_cst);
    if (t > b) {  // was empty
      bottom_.store(b + 1, std::memory_order_relaxed);
      return nullptr;
    }
    T x = a->get(b);
    if (t == b) {  // last element: race the thieves for it through top_
      if (!top_.compare_exchange_strong(t, t + 1, std::memory_order_seq_cst,
                                        std::memory_order_relaxed))
        x = nullptr;
      bottom_.store(b + 1, std::memory_order_relaxed);
    }
    return x;
  }

  // Any thread. Returns nullptr when empty or when another thread won the race.
  T steal() {
    std::int64_t t = top_.load(std::memory_order_seq_cst);
    // acquire pairs with push's release store: the element is visible.
    std::int64_t b = bottom_.load(std::memory_order_seq_cst);
    if (t >= b) return nullptr;
    Array* a = array_.load(std::memory_order_acquire);
    T x = a->get(t);
    if (!top_.compare_exchange_strong(t, t + 1, std::memory_order_seq_cst,
                                      std::memory_order_relaxed))
      return nullptr;
    return x;
  }

  // Any thread; a hint only (may be stale by the time the caller acts on it).
  bool empty() const noexcept {
    return top_.load(std::memory_order_relaxed) >= bottom_.load(std::memory_order_relaxed);
  }

 private:
  // top_: thieves CAS it to take an element; the owner CASes it only for the
  // last element. bottom_: written by the owner only, read by thieves.
  // array_: replaced by the owner on growth, read by thieves (acquire).
  // Each on its own cache line: thieves hammering top_ must not slow the
  // owner's bottom_ updates.
  alignas(64) std::atomic<std::int64_t> top_{0};
  alignas(64) std::atomic<std::int64_t> bottom_{0};
  alignas(64) std::atomic<Array*> array_;
  std::vector<std::unique_ptr<Array>> garbage_;  // owner only; freed with the deque
};

}  // namespace shoal::detail
