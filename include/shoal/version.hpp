#pragma once
namespace shoal {
inline constexpr const char* version = "0.1.0";
}
