import ConformanceMessages
import ProtoRuntime
import Testing

@Suite("ProtoMap")
struct ProtoMapTests {
    @Test("behaves like a dictionary: unique keys, set, replace, remove, lookup")
    func dictionaryBehaviour() {
        var map: ProtoMap<String, Int> = ["a": 1, "b": 2]
        #expect(map["a"] == 1)
        #expect(map["zz"] == nil)
        map["c"] = 3
        map["a"] = 10
        #expect(map.count == 3)
        #expect(map.keys == ["a", "b", "c"])  // a replaced value keeps its place
        #expect(map.removeValue(forKey: "b") == 2)
        map["c"] = nil
        #expect(map.dictionary == ["a": 10])
        #expect(map.updateValue(11, forKey: "a") == 10)
        map.removeAll()
        #expect(map.isEmpty)
        let literal: ProtoMap<Int32, String> = [1: "x", 1: "y"]  // the last value of a repeated key wins
        #expect(literal[1] == "y")
        #expect(literal.count == 1)
    }

    @Test("keys of the same length are told apart (the length check is only a shortcut)")
    func sameLengthKeys() {
        var map: ProtoMap<String, Int> = [:]
        for key in ["ab", "ba", "aa", "bb", "é", "e\u{301}"] { map[key] = key.utf8.count }
        #expect(map.count == 6)
        #expect(map["ba"] == 2)
        #expect(map["é"] == 2)
    }

    @Test("large maps keep working across the index threshold, in both directions")
    func index() {
        var map = ProtoMap<Int64, Int64>()
        let n = Int64(ProtoMap<Int64, Int64>.indexThreshold * 3)
        for i in 0..<n { map[i] = i * i }
        for i in 0..<n { map[i] = map[i].map { $0 + 1 } }
        #expect(map.count == Int(n))
        #expect((0..<n).allSatisfy { map[$0] == $0 * $0 + 1 })
        for i in stride(from: 0, to: n, by: 2) { map[i] = nil }
        #expect(map.count == Int(n) / 2)
        #expect((0..<n).allSatisfy { map[$0] == ($0 % 2 == 0 ? nil : $0 * $0 + 1) })
        for i in 0..<(n - 4) { map[i] = nil }
        #expect(map.count == 2)
        #expect(map.keys == [n - 3, n - 1])
    }

    @Test("equality and hashing ignore order, like a dictionary's")
    func equality() {
        let a: ProtoMap<String, Int> = ["x": 1, "y": 2]
        let b: ProtoMap<String, Int> = ["y": 2, "x": 1]
        let c: ProtoMap<String, Int> = ["x": 1, "y": 3]
        #expect(a == b)
        #expect(a.hashValue == b.hashValue)
        #expect(a != c)
        #expect(Set([a, b, c]).count == 2)
        #expect(ProtoMap(["k": 1]) == ["k": 1])
    }

    @Test("iteration and encoding follow insertion order, so encodings are deterministic")
    func order() throws {
        var message = Conformance_V1_AllTypes()
        message.mString = ["b": "2", "a": "1"]
        message.mString["c"] = "3"
        #expect(message.mString.map(\.key) == ["b", "a", "c"])
        let bytes = message.serializedBytes()
        let decoded = try Conformance_V1_AllTypes(serializedBytes: bytes)
        #expect(decoded.mString.keys == ["b", "a", "c"])
        #expect(decoded.serializedBytes() == bytes)
        #expect("\(decoded.mString)" == "[b: 2, a: 1, c: 3]")
    }
}
