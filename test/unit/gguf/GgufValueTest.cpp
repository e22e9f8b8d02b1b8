#include "runtime/gguf/GgufFile.h"

#include <cmath>
#include <gtest/gtest.h>
#include <limits>

namespace kt::gguf {
namespace {

Value unsignedValue(ValueType type, uint64_t u) {
  Value v;
  v.type = type;
  v.u = u;
  return v;
}
Value signedValue(ValueType type, int64_t i) {
  Value v;
  v.type = type;
  v.i = i;
  return v;
}
Value floatValue(ValueType type, double f) {
  Value v;
  v.type = type;
  v.f = f;
  return v;
}
Value stringValue(std::string s) {
  Value v;
  v.type = ValueType::String;
  v.s = std::move(s);
  return v;
}
Value arrayOf(ValueType elementType, std::vector<Value> elements) {
  Value v;
  v.type = ValueType::Array;
  v.elementType = elementType;
  v.array = std::move(elements);
  return v;
}

TEST(GgufValueTest, IntegerConversions) {
  EXPECT_EQ(unsignedValue(ValueType::UInt32, 7).asInt(), 7);
  EXPECT_EQ(unsignedValue(ValueType::UInt64, UINT64_MAX).asUInt(), UINT64_MAX);
  EXPECT_FALSE(unsignedValue(ValueType::UInt64, UINT64_MAX).asInt().has_value());
  EXPECT_EQ(signedValue(ValueType::Int16, -3).asInt(), -3);
  EXPECT_FALSE(signedValue(ValueType::Int8, -1).asUInt().has_value());
  EXPECT_EQ(signedValue(ValueType::Int64, INT64_MAX).asUInt(),
            static_cast<uint64_t>(INT64_MAX));
  EXPECT_EQ(unsignedValue(ValueType::Bool, 1).asInt(), 1);
  EXPECT_EQ(unsignedValue(ValueType::Bool, 0).asUInt(), 0u);
  EXPECT_FALSE(floatValue(ValueType::Float32, 2.0).asInt().has_value());
  EXPECT_FALSE(stringValue("12").asUInt().has_value());
  EXPECT_TRUE(signedValue(ValueType::Int32, 0).isInteger());
  EXPECT_FALSE(unsignedValue(ValueType::Bool, 1).isInteger());
  EXPECT_FALSE(floatValue(ValueType::Float64, 1).isInteger());
}

TEST(GgufValueTest, DoubleConversions) {
  EXPECT_EQ(floatValue(ValueType::Float32, 0.5).asDouble(), 0.5);
  EXPECT_EQ(signedValue(ValueType::Int32, -4).asDouble(), -4.0);
  EXPECT_EQ(unsignedValue(ValueType::UInt64, 1ull << 40).asDouble(), 1099511627776.0);
  EXPECT_FALSE(stringValue("1.5").asDouble().has_value());
  EXPECT_FALSE(arrayOf(ValueType::Int32, {}).asDouble().has_value());
}

TEST(GgufValueTest, ScalarsRender) {
  EXPECT_EQ(unsignedValue(ValueType::UInt8, 255).toString(), "255");
  EXPECT_EQ(signedValue(ValueType::Int64, INT64_MIN).toString(), "-9223372036854775808");
  EXPECT_EQ(unsignedValue(ValueType::Bool, 1).toString(), "true");
  EXPECT_EQ(unsignedValue(ValueType::Bool, 0).toString(), "false");
  EXPECT_EQ(floatValue(ValueType::Float32, 1.0).toString(), "1.0");
  // A float32 renders with float precision, not as the widened double.
  EXPECT_EQ(floatValue(ValueType::Float32, static_cast<float>(0.1)).toString(), "0.1");
  EXPECT_EQ(floatValue(ValueType::Float64, 1e-6).toString(), "1e-06");
  EXPECT_EQ(floatValue(ValueType::Float64, -std::numeric_limits<double>::infinity()).toString(),
            "-inf");
  EXPECT_EQ(floatValue(ValueType::Float32, std::nan("")).toString(), "nan");
  EXPECT_EQ(stringValue("a\"b\\c\nd\x01").toString(), "\"a\\\"b\\\\c\\nd\\x01\"");
}

TEST(GgufValueTest, ArraysRenderAndAbbreviate) {
  std::vector<Value> numbers;
  for (int i = 0; i < 10; ++i)
    numbers.push_back(signedValue(ValueType::Int32, i));
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
