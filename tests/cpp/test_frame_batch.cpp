// Frame batches: what goes in comes out, and malformed messages are refused.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "shoal/check.hpp"
#include "shoal/frame_batch.hpp"

namespace {

std::vector<unsigned char> sample(std::vector<std::string>* payloads) {
  shoal::FrameBatchWriter w;
  for (std::size_t i = 0; i < payloads->size(); ++i) {
    const std::string& s = (*payloads)[i];
    w.add(1000 + i, i % 2 ? shoal::FrameKind::Result : shoal::FrameKind::Call, 0, s.data(),
          s.size());
  }
  return w.take();
}

TEST(FrameBatch, WhatGoesInComesOutForEveryLengthUpToPadding) {
  std::vector<std::string> payloads;
  for (int n = 0; n < 40; ++n) payloads.push_back(std::string(static_cast<std::size_t>(n), char('a' + n % 26)));
  auto bytes = sample(&payloads);
  auto frames = shoal::decode_frame_batch(bytes.data(), bytes.size());
  ASSERT_EQ(frames.size(), payloads.size());
  for (std::size_t i = 0; i < frames.size(); ++i) {
    EXPECT_EQ(frames[i].header.task_id, 1000 + i);
    EXPECT_EQ(frames[i].header.kind, i % 2 ? 4u : 2u);
    ASSERT_EQ(frames[i].header.length, payloads[i].size());
    EXPECT_EQ(std::memcmp(frames[i].payload, payloads[i].data(), payloads[i].size()), 0);
  }
}

TEST(FrameBatch, AnEmptyBatchIsItsHeader) {
  shoal::FrameBatchWriter w;
  auto bytes = w.take();
  EXPECT_EQ(bytes.size(), shoal::frame_batch_header_bytes);
  EXPECT_TRUE(shoal::decode_frame_batch(bytes.data(), bytes.size()).empty());
}

TEST(FrameBatch, TheWriterCanBeReusedAfterTake) {
  shoal::FrameBatchWriter w;
  w.add(1, shoal::FrameKind::Call, 0, "x", 1);
  (void)w.take();
  w.add(2, shoal::FrameKind::Call, 0, "yz", 2);
  auto bytes = w.take();
  auto frames = shoal::decode_frame_batch(bytes.data(), bytes.size());
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(frames[0].header.task_id, 2u);
}

TEST(FrameBatch, EveryTruncationIsRefused) {
  std::vector<std::string> payloads{"hello", "", "world!!!", "a longer payload of some bytes"};
  auto bytes = sample(&payloads);
  for (std::size_t cut = 0; cut < bytes.size(); ++cut)
    EXPECT_THROW(shoal::decode_frame_batch(bytes.data(), cut), shoal::Error) << cut;
}

TEST(FrameBatch, EveryFlippedByteOfAHeaderIsRefused) {
  std::vector<std::string> payloads{"abc", "defgh"};
  auto bytes = sample(&payloads);
  // The batch header and each frame header; payload bytes are opaque.
  std::vector<std::size_t> header_bytes;
  for (std::size_t i = 0; i < shoal::frame_batch_header_bytes; ++i) header_bytes.push_back(i);
  std::size_t at = shoal::frame_batch_header_bytes;
  for (const auto& p : payloads) {
    for (std::size_t i = 0; i < sizeof(shoal::FrameHeader); ++i) header_bytes.push_back(at + i);
    at += shoal::frame_footprint(p.size());
  }
  for (std::size_t i : header_bytes) {
    auto bad = bytes;
    bad[i] ^= 0x01;
    EXPECT_THROW(shoal::decode_frame_batch(bad.data(), bad.size()), shoal::Error) << i;
  }
}

TEST(FrameBatch, ACountPastTheBytesIsRefusedBeforeAllocating) {
  std::vector<unsigned char> bytes(shoal::frame_batch_header_bytes, 0);
  std::memcpy(bytes.data(), &shoal::frame_batch_magic, 8);
  const std::uint32_t lie = 0xffffffffu;
  std::memcpy(bytes.data() + 8, &lie, 4);
  EXPECT_THROW(shoal::decode_frame_batch(bytes.data(), bytes.size()), shoal::Error);
}

TEST(FrameBatch, TrailingBytesAreRefused) {
  std::vector<std::string> payloads{"abc"};
  auto bytes = sample(&payloads);
  bytes.resize(bytes.size() + 8, 0);
  EXPECT_THROW(shoal::decode_frame_batch(bytes.data(), bytes.size()), shoal::Error);
}

TEST(FrameBatch, UnknownFlagsAreRefusedByTheWriter) {
  shoal::FrameBatchWriter w;
  EXPECT_THROW(w.add(1, shoal::FrameKind::Call, 0x80, "x", 1), shoal::Error);
}

}  // namespace
