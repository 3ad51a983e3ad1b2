#include "shoal/monitor_file.hpp"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "shoal/check.hpp"

namespace shoal {

namespace {

void put_u32(unsigned char* p, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<unsigned char>(v >> (8 * i));
}
void put_u16(unsigned char* p, std::uint16_t v) {
  p[0] = static_cast<unsigned char>(v);
  p[1] = static_cast<unsigned char>(v >> 8);
}
std::uint32_t get_u32(const unsigned char* p) {
  return std::uint32_t{p[0]} | std::uint32_t{p[1]} << 8 | std::uint32_t{p[2]} << 16 |
         std::uint32_t{p[3]} << 24;
}
std::uint16_t get_u16(const unsigned char* p) {
  return static_cast<std::uint16_t>(p[0] | p[1] << 8);
}

// Writes all of n bytes, retrying short writes and EINTR; false with errno set.
bool write_all(int fd, const unsigned char* p, std::size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (w == 0) {
      errno = ENOSPC;
      return false;
    }
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

}  // namespace

std::string shuffle_records(std::string_view in, std::size_t rs) {
  std::string out(in.size(), '\0');
  if (rs == 0 || in.size() % rs != 0) return std::string(in);
  const std::size_t n = in.size() / rs;
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t b = 0; b < rs; ++b) out[b * n + i] = in[i * rs + b];
  return out;
}

std::size_t delta_encode_into(std::string_view in, std::size_t rs, unsigned char* out) {
  if (rs == 0 || rs % 8 != 0 || in.size() % rs != 0) return 0;
  const std::size_t words = rs / 8;
  std::uint64_t last[8192 / 8] = {};  // rs < 64 KiB is checked by the writer; 8 KiB here
  if (words > sizeof last / sizeof last[0]) return 0;
  unsigned char* o = out;
  const char* p = in.data();
  const char* const end = p + in.size();
  for (; p != end; p += rs) {
    for (std::size_t k = 0; k < words; ++k) {
      std::uint64_t w;
      std::memcpy(&w, p + 8 * k, 8);
      const auto d = static_cast<std::int64_t>(w - last[k]);
      last[k] = w;
      std::uint64_t z = (static_cast<std::uint64_t>(d) << 1) ^ static_cast<std::uint64_t>(d >> 63);
      while (z >= 0x80) {
        *o++ = static_cast<unsigned char>(z | 0x80);
        z >>= 7;
      }
      *o++ = static_cast<unsigned char>(z);
    }
  }
  return static_cast<std::size_t>(o - out);
}

std::string delta_encode(std::string_view in, std::size_t rs) {
  std::string out(in.size() / 8 * 10, '\0');
  out.resize(delta_encode_into(in, rs, reinterpret_cast<unsigned char*>(out.data())));
  return out;
}

bool delta_decode(std::string_view in, std::size_t rs, std::size_t raw_len, std::string& out) {
  if (rs == 0 || rs % 8 != 0 || raw_len % rs != 0) return false;
  const std::size_t words = rs / 8;
  std::vector<std::uint64_t> prev(words, 0);
  out.assign(raw_len, '\0');
  const auto* p = reinterpret_cast<const unsigned char*>(in.data());
  const auto* end = p + in.size();
  for (std::size_t at = 0; at < raw_len; at += 8) {
    std::uint64_t z = 0;
    int shift = 0;
    while (true) {
      if (p == end || shift > 63) return false;
      const unsigned char b = *p++;
      z |= static_cast<std::uint64_t>(b & 0x7f) << shift;
      if ((b & 0x80) == 0) break;
      shift += 7;
    }
    const std::uint64_t d = (z >> 1) ^ (~(z & 1) + 1);
    std::uint64_t& last = prev[(at / 8) % words];
    last += d;
    std::memcpy(out.data() + at, &last, 8);
  }
  return p == end;
}

std::string unshuffle_records(std::string_view in, std::size_t rs) {
  std::string out(in.size(), '\0');
  if (rs == 0 || in.size() % rs != 0) return std::string(in);
  const std::size_t n = in.size() / rs;
  for (std::size_t b = 0; b < rs; ++b)
    for (std::size_t i = 0; i < n; ++i) out[i * rs + b] = in[b * n + i];
  return out;
}

MonitorWriter::MonitorWriter(const std::string& path) : owner_pid_(::getpid()) {
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
  if (fd_ < 0) throw_errno("cannot create the monitor file " + path);
  unsigned char h[monitor_header_bytes];
  std::memcpy(h, monitor_magic, 8);
  put_u32(h + 8, monitor_version);
  put_u32(h + 12, 0);
  if (!write_all(fd_, h, sizeof h)) {
    const int e = errno;
    ::close(fd_);
    fd_ = -1;
    throw_errno("cannot write the monitor file " + path, e);
  }
  written_ = sizeof h;
}

MonitorWriter::~MonitorWriter() { close(); }

void MonitorWriter::close() {
  std::lock_guard<std::mutex> lock(mu_);
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

bool MonitorWriter::failed() const {
  std::lock_guard<std::mutex> lock(mu_);
  return !error_.empty();
}

std::string MonitorWriter::error() const {
  std::lock_guard<std::mutex> lock(mu_);
  return error_;
}

std::uint64_t MonitorWriter::bytes_written() const {
  std::lock_guard<std::mutex> lock(mu_);
  return written_;
}

bool MonitorWriter::append(ChunkType type, const void* data, std::size_t size,
                           std::size_t record_size) {
  if (size > monitor_max_chunk) return false;  // callers split bigger payloads
  std::string_view raw(static_cast<const char*>(data), size);
  const bool records = record_size > 0 && record_size < 8192 && size % record_size == 0 && size > 0;
  const bool delta = records && record_size % 8 == 0;
  // The chunk is built in a buffer of this thread's that only grows: no
  // allocation, no zero-filling per chunk (a tick's task events are
  // megabytes), and one write(2) for the whole chunk.
  thread_local std::vector<unsigned char> buf;
  const std::size_t room = delta ? size / 8 * 10 : compressBound(static_cast<uLong>(size));
  if (buf.size() < monitor_chunk_header_bytes + room) buf.resize(monitor_chunk_header_bytes + room);
  unsigned char* const h = buf.data();
  unsigned char* const payload = h + monitor_chunk_header_bytes;
  std::uint16_t shuffle = 0;
  std::uint16_t codec = 1;
  std::size_t stored = 0;
  if (delta) {
    // Records of 64-bit words (ids, times, sizes): each word as the zigzag
    // varint of its change since the record before, stored as is (zlib
    // would halve them again at twice the sampler's CPU per record:
    // measured ~40 ns to encode with allocation, ~70 to deflate).
    shuffle = static_cast<std::uint16_t>(record_size);
    codec = 2;
    stored = delta_encode_into(raw, record_size, payload);
  } else {
    std::string shuffled;
    if (records) {
      shuffled = shuffle_records(raw, record_size);
      raw = shuffled;
      shuffle = static_cast<std::uint16_t>(record_size);
    }
    // zlib level 1: most of the ratio of level 6 at a third of the CPU.
    uLongf got = static_cast<uLongf>(room);
    if (compress2(payload, &got, reinterpret_cast<const Bytef*>(raw.data()),
                  static_cast<uLong>(raw.size()), 1) == Z_OK &&
        got < raw.size()) {
      stored = got;
    } else {
      codec = 0;
      shuffle = 0;
      stored = size;
      std::memcpy(payload, data, size);
    }
  }
  put_u32(h, static_cast<std::uint32_t>(type));
  put_u32(h + 4, static_cast<std::uint32_t>(stored));
  put_u32(h + 8, static_cast<std::uint32_t>(size));
  put_u16(h + 12, shuffle);
  put_u16(h + 14, codec);
  uLong crc = crc32(0L, h, 16);
  crc = crc32(crc, payload, static_cast<uInt>(stored));
  put_u32(h + 16, static_cast<std::uint32_t>(crc));
  std::lock_guard<std::mutex> lock(mu_);
  if (fd_ < 0 || !error_.empty() || ::getpid() != owner_pid_) return false;
  if (!write_all(fd_, h, monitor_chunk_header_bytes + stored)) {
    error_ = std::string("cannot write the monitor file: ") + std::strerror(errno);
    return false;
  }
  written_ += monitor_chunk_header_bytes + stored;
  return true;
}

ParsedMonitorFile parse_monitor_file(std::string_view bytes) {
  if (bytes.size() < monitor_header_bytes || std::memcmp(bytes.data(), monitor_magic, 8) != 0)
    throw MonitorFileError("not a shoal monitor file (no SHOALMON header)");
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  ParsedMonitorFile out;
  out.version = get_u32(p + 8);
  if (out.version != monitor_version)
    throw MonitorFileError("shoal monitor file version " + std::to_string(out.version) +
                           " (this shoal reads version " + std::to_string(monitor_version) + ")");
  std::size_t at = monitor_header_bytes;
  while (at < bytes.size()) {
    const std::size_t left = bytes.size() - at;
    if (left < monitor_chunk_header_bytes) {
      out.truncated = "the file ends inside a chunk header at byte " + std::to_string(at);
      break;
    }
    const unsigned char* h = p + at;
    const std::uint32_t type = get_u32(h);
    const std::uint32_t stored = get_u32(h + 4);
    const std::uint32_t raw = get_u32(h + 8);
    const std::uint16_t shuffle = get_u16(h + 12);
    const std::uint16_t codec = get_u16(h + 14);
    const std::uint32_t crc_want = get_u32(h + 16);
    const std::string where = "chunk at byte " + std::to_string(at);
    if (stored > monitor_max_chunk || raw > monitor_max_chunk || codec > 2 ||
        (codec == 0 && stored != raw) ||
        // deflate never packs more than 1032:1, nor a varint less than a
        // byte per 8: a larger claim is damage (and must not make the reader
        // allocate it)
        (codec == 1 && raw > std::uint64_t{stored} * 1032 + 64) ||
        (codec == 2 && raw > std::uint64_t{stored} * 8) ||
        (codec == 2 && (shuffle == 0 || shuffle % 8 != 0)))
      throw MonitorFileError("damaged shoal monitor file: impossible " + where);
    if (left - monitor_chunk_header_bytes < stored) {
      out.truncated = "the file is cut inside its last chunk (at byte " + std::to_string(at) +
                      ", " + std::to_string(left) + " of " +
                      std::to_string(monitor_chunk_header_bytes + stored) + " bytes)";
      break;
    }
    const unsigned char* payload = h + monitor_chunk_header_bytes;
    uLong crc = crc32(0L, h, 16);
    crc = crc32(crc, payload, stored);
    if (static_cast<std::uint32_t>(crc) != crc_want)
      throw MonitorFileError("damaged shoal monitor file: bad checksum in " + where);
    std::string data;
    if (codec == 1) {
      data.resize(raw);
      uLongf got = raw;
      if (uncompress(reinterpret_cast<Bytef*>(data.data()), &got, payload, stored) != Z_OK ||
          got != raw)
        throw MonitorFileError("damaged shoal monitor file: bad compressed data in " + where);
    } else if (codec == 2) {
      if (!delta_decode(std::string_view(reinterpret_cast<const char*>(payload), stored), shuffle,
                        raw, data))
        throw MonitorFileError("damaged shoal monitor file: bad delta records in " + where);
    } else {
      data.assign(reinterpret_cast<const char*>(payload), stored);
    }
    if (shuffle > 0 && codec != 2) {
      if (raw % shuffle != 0)
        throw MonitorFileError("damaged shoal monitor file: records do not fit in " + where);
      data = unshuffle_records(data, shuffle);
    }
    out.chunks.push_back(MonitorChunk{type, std::move(data)});
    at += monitor_chunk_header_bytes + stored;
  }
  return out;
}

}  // namespace shoal
