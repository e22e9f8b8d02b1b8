#include "runtime/gguf/GgufFile.h"

#include <cmath>
#include <gtest/gtest.h>
#include <limits>

namespace kt::gguf {
namespace {

Value arrayOf(ValueType elementType, std::vector<Value> elements) {
  Value v;
  v.type = ValueType::Array;
  v.elementType = elementType;
  v.array = std::move(elements);
  return v;
}

TEST(GgufValueTest, IntegerConversions) {
  EXPECT_EQ(unsignedValue(7, ValueType::UInt32).asInt(), 7);
  EXPECT_EQ(unsignedValue(UINT64_MAX, ValueType::UInt64).asUInt(), UINT64_MAX);
  EXPECT_FALSE(unsignedValue(UINT64_MAX, ValueType::UInt64).asInt().has_value());
  EXPECT_EQ(signedValue(-3, ValueType::Int16).asInt(), -3);
  EXPECT_FALSE(signedValue(-1, ValueType::Int8).asUInt().has_value());
  EXPECT_EQ(signedValue(INT64_MAX, ValueType::Int64).asUInt(), static_cast<uint64_t>(INT64_MAX));
  EXPECT_EQ(unsignedValue(1, ValueType::Bool).asInt(), 1);
  EXPECT_EQ(unsignedValue(0, ValueType::Bool).asUInt(), 0u);
  EXPECT_FALSE(realValue(2.0, ValueType::Float32).asInt().has_value());
  EXPECT_FALSE(stringValue("12").asUInt().has_value());
  EXPECT_TRUE(signedValue(0, ValueType::Int32).isInteger());
  EXPECT_FALSE(unsignedValue(1, ValueType::Bool).isInteger());
  EXPECT_FALSE(realValue(1, ValueType::Float64).isInteger());
}

TEST(GgufValueTest, DoubleConversions) {
  EXPECT_EQ(realValue(0.5, ValueType::Float32).asDouble(), 0.5);
  EXPECT_EQ(signedValue(-4, ValueType::Int32).asDouble(), -4.0);
  EXPECT_EQ(unsignedValue(1ull << 40, ValueType::UInt64).asDouble(), 1099511627776.0);
  EXPECT_FALSE(stringValue("1.5").asDouble().has_value());
  EXPECT_FALSE(arrayOf(ValueType::Int32, {}).asDouble().has_value());
}

TEST(GgufValueTest, ScalarsRender) {
  EXPECT_EQ(unsignedValue(255, ValueType::UInt8).toString(), "255");
  EXPECT_EQ(signedValue(INT64_MIN, ValueType::Int64).toString(), "-9223372036854775808");
  EXPECT_EQ(unsignedValue(1, ValueType::Bool).toString(), "true");
  EXPECT_EQ(unsignedValue(0, ValueType::Bool).toString(), "false");
  EXPECT_EQ(realValue(1.0, ValueType::Float32).toString(), "1.0");
  // A float32 renders with float precision, not as the widened double.
  EXPECT_EQ(realValue(static_cast<float>(0.1), ValueType::Float32).toString(), "0.1");
  EXPECT_EQ(realValue(1e-6, ValueType::Float64).toString(), "1e-06");
  EXPECT_EQ(realValue(-std::numeric_limits<double>::infinity(), ValueType::Float64).toString(),
            "-inf");
  EXPECT_EQ(realValue(std::nan(""), ValueType::Float32).toString(), "nan");
  EXPECT_EQ(stringValue("a\"b\\c\nd\x01").toString(), "\"a\\\"b\\\\c\\nd\\x01\"");
}

TEST(GgufValueTest, ArraysRenderAndAbbreviate) {
  std::vector<Value> numbers;
  for (int i = 0; i < 10; ++i)
    numbers.push_back(signedValue(i, ValueType::Int32));
  Value array = arrayOf(ValueType::Int32, numbers);
  EXPECT_EQ(array.toString(3), "[0, 1, 2, ... 7 more]");
  EXPECT_EQ(array.toString(10), "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]");
  EXPECT_EQ(array.toString(0), "[... 10 more]");
  EXPECT_EQ(arrayOf(ValueType::String, {}).toString(), "[]");

  Value nested = arrayOf(ValueType::Array, {arrayOf(ValueType::String, {stringValue("x")}),
                                            arrayOf(ValueType::String, {})});
  EXPECT_EQ(nested.toString(), "[[\"x\"], []]");
}

TEST(GgufValueTest, TypeNames) {
  EXPECT_EQ(valueTypeName(ValueType::Float32), "float32");
  EXPECT_EQ(valueTypeName(ValueType::Array), "array");
  EXPECT_EQ(valueTypeName(ValueType::UInt64), "uint64");
  EXPECT_EQ(valueTypeName(static_cast<ValueType>(99)), "unknown");
}

} // namespace
} // namespace kt::gguf
