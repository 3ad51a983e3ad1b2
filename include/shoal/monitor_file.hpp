// shoal/monitor_file.hpp — the monitor's file: append-only chunks.
//
//   file    = header chunk*
//   header  = "SHOALMON" (8 bytes) | version u32 | flags u32 (0)
//   chunk   = type u32 | stored u32 | raw u32 | shuffle u16 | codec u16 | crc32 u32
//             | stored bytes of payload
//
// All integers little-endian. crc32 (zlib's) covers the first 16 bytes of the
// chunk header and the stored payload. shuffle > 0: the payload is fixed
// records of that many bytes. codec 0: stored as is; 1: zlib, of the records
// stored byte-plane by byte-plane when shuffle > 0 (every record's byte 0,
// then every byte 1, ...: the slowly changing high bytes of ids and times
// together); 2: delta_encode() (records of 64-bit words: each word as the
// zigzag varint of its change since the record before: 1-3 bytes for ids,
// times and sizes; about 14 bytes a task event instead of 48, at ~40 ns of
// the sampler thread's CPU per record; zlib on top would halve it for
// another ~70 ns).
// A chunk is written with one write(2), so a killed writer leaves whole
// chunks and at most one cut at the end: the reader reports a cut tail, and
// rejects anything else that does not check (a foreign file, a bad crc).
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace shoal {

inline constexpr char monitor_magic[8] = {'S', 'H', 'O', 'A', 'L', 'M', 'O', 'N'};
inline constexpr std::uint32_t monitor_version = 1;
inline constexpr std::size_t monitor_header_bytes = 16;
inline constexpr std::size_t monitor_chunk_header_bytes = 20;
// No chunk's payload is larger (the reader treats a larger length as damage).
inline constexpr std::uint32_t monitor_max_chunk = 1u << 28;

// Chunk types (shoal/monitor/_file.py reads them).
enum class ChunkType : std::uint32_t {
  meta = 1,            // JSON object: the run's meta
  functions = 2,       // JSON list of [pool, fn_id, name]
  workers = 3,         // JSON list of [event (0 start, 1 end), pool, slot, pid, tid, t]
  task_events = 4,     // TaskEvent records (shoal/event_ring.hpp)
  driver_events = 5,   // DriverEvent records (shoal/sampler.hpp)
  counters = 6,        // CounterRecord records, a snapshot of every ring
  core_samples = 7,    // records: t i64, then one f32 busy fraction per core of meta
  worker_samples = 8,  // WorkerSampleRecord
  system_samples = 9,  // SystemSampleRecord
  native = 10,         // NativeRecord
  meta_update = 11,    // JSON object merged into meta
  end = 12,            // JSON object: end_ns, reason; the clean end of a run
  gpu_samples = 13,    // GpuSampleRecord
};

// Appends chunks to one file; thread-safe (one mutex around each append).
// Never throws after open: a failed write (full disk) marks it failed, and
// later appends do nothing; error() says why.
class MonitorWriter {
 public:
  // Creates (truncates) path and writes the header. Throws SystemError.
  explicit MonitorWriter(const std::string& path);
  MonitorWriter(const MonitorWriter&) = delete;
  MonitorWriter& operator=(const MonitorWriter&) = delete;
  ~MonitorWriter();

  // Appends one chunk; returns false if the file failed (now or before).
  // record_size > 0: the payload is records of that size (shuffled).
  bool append(ChunkType type, const void* data, std::size_t size, std::size_t record_size = 0);
  bool failed() const;
  std::string error() const;
  std::uint64_t bytes_written() const;
  // Closes the file (later appends fail quietly).
  void close();

 private:
  mutable std::mutex mu_;
  int fd_ = -1;
  std::uint64_t written_ = 0;
  std::string error_;
  int owner_pid_ = 0;  // a forked child never writes its parent's file
};

struct MonitorChunk {
  std::uint32_t type = 0;
  std::string data;  // the payload, decompressed and unshuffled
};

struct ParsedMonitorFile {
  std::uint32_t version = 0;
  std::vector<MonitorChunk> chunks;
  // "" if every byte belonged to a whole chunk; else why the tail was cut.
  std::string truncated;
};

// Thrown for a file that is not a monitor file, or damaged before its tail.
class MonitorFileError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Parses a whole file image. Throws MonitorFileError.
ParsedMonitorFile parse_monitor_file(std::string_view bytes);

// The transforms of the format (exposed for tests and the fuzzer).
std::string shuffle_records(std::string_view in, std::size_t record_size);
std::string unshuffle_records(std::string_view in, std::size_t record_size);
// Records of record_size bytes (a multiple of 8) as zigzag LEB128 varints of
// each 64-bit word's difference from the same word of the previous record.
std::string delta_encode(std::string_view in, std::size_t record_size);
// The same into out (room for in.size() / 8 * 10 bytes); returns the length,
// 0 for records it cannot take (not a multiple of 8, over 8 KiB).
std::size_t delta_encode_into(std::string_view in, std::size_t record_size, unsigned char* out);
// Its inverse into exactly raw_len bytes; false if `in` is not such an encoding.
bool delta_decode(std::string_view in, std::size_t record_size, std::size_t raw_len,
                  std::string& out);

}  // namespace shoal
