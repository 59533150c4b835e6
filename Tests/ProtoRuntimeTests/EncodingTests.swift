import ConformanceMessages
import ProtoRuntime
import ProtoWellKnownTypes
import Testing

@Suite("Encoding and decoding by the proto3 rules")
struct EncodingTests {
    typealias AllTypes = Conformance_V1_AllTypes

    @Test("a message with every field at its default encodes to nothing")
    func defaultsOmitted() throws {
        try assertEncodes(AllTypes(), [])
        try assertEncodes(AllTypes(fInt32: 0, fString: "", fEnum: .unspecified), [])
    }

    @Test("scalars encode with the spec's wire types")
    func scalars() throws {
        try assertEncodes(AllTypes(fInt32: 150), [0x28, 0x96, 0x01])
        try assertEncodes(AllTypes(fInt32: -1), [0x28] + [UInt8](repeating: 0xFF, count: 9) + [0x01])
        try assertEncodes(AllTypes(fSint32: -1), [0x70, 0x01])
        try assertEncodes(AllTypes(fSint64: -2), [0x78, 0x03])
        try assertEncodes(AllTypes(fFixed32: 1), [0x3D, 1, 0, 0, 0])
        try assertEncodes(AllTypes(fSfixed64: -1), [0x69] + [UInt8](repeating: 0xFF, count: 8))
        try assertEncodes(AllTypes(fDouble: 1), [0x09, 0, 0, 0, 0, 0, 0, 0xF0, 0x3F])
        try assertEncodes(AllTypes(fFloat: -2), [0x15, 0, 0, 0, 0xC0])
        try assertEncodes(AllTypes(fBool: true), [0x40, 0x01])
        try assertEncodes(AllTypes(fString: "hé"), [0x4A, 0x03, 0x68, 0xC3, 0xA9])
        try assertEncodes(AllTypes(fBytes: [0, 0xFF]), [0x52, 0x02, 0x00, 0xFF])
        try assertEncodes(AllTypes(fEnum: .blue), [0x80, 0x01] + [0xFD] + [UInt8](repeating: 0xFF, count: 8) + [0x01])
    }

    @Test("negative zero is not the default and is encoded")
    func negativeZero() throws {
        try assertEncodes(AllTypes(fDouble: -0.0), [0x09, 0, 0, 0, 0, 0, 0, 0, 0x80])
    }

    @Test("two-byte and five-byte tags")
    func largeFieldNumbers() throws {
        try assertEncodes(AllTypes(fMaxField: 1), [0xF8, 0xFF, 0xFF, 0xFF, 0x0F, 0x01])
        try assertEncodes(AllTypes(fMessage: Conformance_V1_Inner(a: 1)), [0x8A, 0x01, 0x02, 0x08, 0x01])
    }

    @Test("fields are written in field-number order, unknown fields last")
    func canonicalOrder() throws {
        var message = AllTypes(fInt64: 1, fInt32: 2)
        message.unknownFields = UnknownFields(bytes: [0xE0, 0x12, 0x07])  // field 300 varint 7
        try assertEncodes(message, [0x18, 0x01, 0x28, 0x02, 0xE0, 0x12, 0x07])
    }

    @Test("repeated scalars are packed; [packed = false] fields are not")
    func packing() throws {
        try assertEncodes(
            AllTypes(rInt32: [1, 150, -1]),
            [0xCA, 0x01, 0x0D, 0x01, 0x96, 0x01] + [UInt8](repeating: 0xFF, count: 9) + [0x01])
        try assertEncodes(AllTypes(rFixed32: [1, 2]), [0xDA, 0x01, 0x08, 1, 0, 0, 0, 2, 0, 0, 0])
        try assertEncodes(AllTypes(uInt32: [1, 2]), [0xC8, 0x02, 0x01, 0xC8, 0x02, 0x02])
        try assertEncodes(AllTypes(rString: ["a", ""]), [0xEA, 0x01, 0x01, 0x61, 0xEA, 0x01, 0x00])
    }

    @Test("repeated scalars decode from packed and unpacked runs alike, appending")
    func packedAndUnpackedAccepted() throws {
        let unpacked: [UInt8] = [0xC8, 0x01, 0x05, 0xC8, 0x01, 0x06]
        let packed: [UInt8] = [0xCA, 0x01, 0x02, 0x07, 0x08]
        #expect(try AllTypes(serializedBytes: unpacked + packed).rInt32 == [5, 6, 7, 8])
        #expect(try AllTypes(serializedBytes: [0xC8, 0x02, 0x01] + [0xCA, 0x02, 0x01, 0x02]).uInt32 == [1, 2])
    }

    @Test("packed fixed-width runs at any alignment append to what came before, in order")
    func fixedWidthRunsAppend() throws {
        func le<T: FixedWidthInteger>(_ value: T) -> [UInt8] { withUnsafeBytes(of: value.littleEndian, Array.init) }
        // One unpacked fixed32, then two packed runs of the same field: every run starts at an odd address offset.
        let fixed: [UInt8] =
            [0xDD, 0x01] + le(UInt32(1)) + [0xDA, 0x01, 0x08] + le(UInt32(2)) + le(UInt32(0xFFFF_FFFF))
            + [0xDA, 0x01, 0x04] + le(UInt32(4))
        #expect(try AllTypes(serializedBytes: fixed).rFixed32 == [1, 2, 0xFFFF_FFFF, 4])
        let doubles: [UInt8] =
            [0xAA, 0x01, 0x10] + le(1.5.bitPattern) + le((-2.25).bitPattern) + [0xA9, 0x01] + le(4.0.bitPattern)
        #expect(try AllTypes(serializedBytes: [0x28, 0x01] + doubles).rDouble == [1.5, -2.25, 4.0])
    }

    @Test("repeated strings and messages, together or split by other fields, keep every element in order")
    func repeatedElementsAppend() throws {
        // r_string (29) three times, another field, r_string again; r_message (37) twice around it.
        let strings: [UInt8] = [0xEA, 0x01, 0x01, 0x61, 0xEA, 0x01, 0x00, 0xEA, 0x01, 0x02, 0x62, 0x63]
        let inner: [UInt8] = [0xAA, 0x02, 0x03, 0x12, 0x01, 0x78]
        let bytes = strings + inner + [0x28, 0x01] + [0xEA, 0x01, 0x01, 0x64] + inner
        let message = try AllTypes(serializedBytes: bytes)
        #expect(message.rString == ["a", "", "bc", "d"])
        #expect(message.rMessage.map(\.b) == ["x", "x"])
    }

    @Test("the last occurrence of a singular scalar wins")
    func lastOneWins() throws {
        #expect(try AllTypes(serializedBytes: [0x28, 0x01, 0x28, 0x02]).fInt32 == 2)
        #expect(try AllTypes(serializedBytes: [0x4A, 0x01, 0x61, 0x4A, 0x01, 0x62]).fString == "b")
    }

    @Test("repeated occurrences of a message field merge")
    func messageMerge() throws {
        let first: [UInt8] = [0x8A, 0x01, 0x04, 0x08, 0x01, 0x18, 0x05]  // a = 1, c = [5]
        let second: [UInt8] = [0x8A, 0x01, 0x05, 0x12, 0x01, 0x78, 0x18, 0x06]  // b = "x", c = [6]
        let message = try AllTypes(serializedBytes: first + second)
        #expect(message.fMessage == Conformance_V1_Inner(a: 1, b: "x", c: [5, 6]))
    }

    @Test("oneof: setting one member clears the others; on the wire the last member wins")
    func oneof() throws {
        var message = AllTypes()
        message.cString = "s"
        message.cUint32 = 7
        #expect(message.choice == .cUint32(7))
        #expect(message.cString == "")
        try assertEncodes(message, [0x88, 0x05, 0x07])
        try assertEncodes(AllTypes(choice: .cUint32(0)), [0x88, 0x05, 0x00])  // a set member is written even at zero
        let decoded = try AllTypes(serializedBytes: [0x88, 0x05, 0x07, 0x92, 0x05, 0x01, 0x7A])
        #expect(decoded.choice == .cString("z"))
        let merged = try AllTypes(serializedBytes: [0x9A, 0x05, 0x02, 0x08, 0x01, 0x9A, 0x05, 0x02, 0x12, 0x00])
        #expect(merged.choice == .cMessage(Conformance_V1_Inner(a: 1)))
    }

    @Test("open enums keep values the schema does not name and re-encode them")
    func openEnums() throws {
        let message = try AllTypes(serializedBytes: [0x80, 0x01, 0x63])
        #expect(message.fEnum == .unrecognized(99))
        #expect(message.fEnum.rawValue == 99)
        #expect(message.serializedBytes() == [0x80, 0x01, 0x63])
        #expect(Conformance_V1_Color(rawValue: 2) == .green)
    }

    @Test("proto3 optional fields track presence, zero included")
    func presence() throws {
        try assertEncodes(Conformance_V1_Presence(), [])
        try assertEncodes(Conformance_V1_Presence(oInt32: 0), [0x08, 0x00])
        try assertEncodes(Conformance_V1_Presence(oString: ""), [0x12, 0x00])
        try assertEncodes(Conformance_V1_Presence(oMessage: Conformance_V1_Inner()), [0x22, 0x00])
        try assertEncodes(Conformance_V1_Presence(oBool: false), [0x30, 0x00])
        try assertEncodes(Conformance_V1_Presence(plain: 0), [])
        let decoded = try Conformance_V1_Presence(serializedBytes: [0x08, 0x00, 0x18, 0x00])
        #expect(decoded.oInt32 == 0)
        #expect(decoded.oEnum == .unspecified)
        #expect(decoded.oString == nil)
    }

    @Test("maps: every key type round trips; a repeated key keeps the last value")
    func maps() throws {
        var message = AllTypes()
        message.mInt32 = [-1: "a", 2: "b"]
        message.mInt64 = [.min: "min"]
        message.mUint32 = [.max: "max"]
        message.mUint64 = [0: ""]
        message.mSint32 = [-5: "x"]
        message.mSint64 = [-6: "y"]
        message.mFixed32 = [7: "z"]
        message.mFixed64 = [8: "w"]
        message.mSfixed32 = [-9: "v"]
        message.mSfixed64 = [-10: "u"]
        message.mBool = [true: "t", false: "f"]
        message.mString = ["k": "v", "": "empty key"]
        message.mMessage = ["m": Conformance_V1_Inner(a: 3)]
        message.mEnum = ["e": .unrecognized(42)]
        message.mBytes = [1: [1, 2, 3]]
        message.mDouble = ["d": -0.5]
        #expect(try AllTypes(serializedBytes: message.serializedBytes()) == message)
        // One entry: key then value, both always written.
        try assertEncodes(AllTypes(mInt32: [1: ""]), [0xEA, 0x03, 0x04, 0x08, 0x01, 0x12, 0x00])
        let twice: [UInt8] = [
            0xEA, 0x03, 0x05, 0x08, 0x01, 0x12, 0x01, 0x61, 0xEA, 0x03, 0x05, 0x08, 0x01, 0x12, 0x01, 0x62,
        ]
        #expect(try AllTypes(serializedBytes: twice).mInt32 == [1: "b"])
        // Missing key or value: the defaults.
        #expect(try AllTypes(serializedBytes: [0xEA, 0x03, 0x00]).mInt32 == [0: ""])
        #expect(try AllTypes(serializedBytes: [0xCA, 0x04, 0x02, 0x0A, 0x00]).mMessage == ["": Conformance_V1_Inner()])
    }

    @Test("unknown fields pass through a message with an older schema intact")
    func unknownFieldsPassThrough() throws {
        var full = AllTypes(fInt64: 5, fString: "kept", fMessage: Conformance_V1_Inner(a: 1))
        full.rSint64 = [-1, 2]
        full.mString = ["a": "b"]
        full.choice = .cBytes([9])
        full.fMaxField = 3
        full.fTimestamp = Google_Protobuf_Timestamp(seconds: 10, nanos: 5)
        let old = try Conformance_V1_AllTypesV0(serializedBytes: full.serializedBytes())
        #expect(old.fInt64 == 5)
        #expect(old.fString == "kept")
        #expect(!old.unknownFields.isEmpty)
        var changed = old
        changed.fInt64 = 6
        var expected = full
        expected.fInt64 = 6
        #expect(try AllTypes(serializedBytes: changed.serializedBytes()) == expected)
    }

    @Test("groups in unknown fields are skipped and kept")
    func unknownGroups() throws {
        // Field 200 start-group, field 1 varint 1 inside, nested group 201, end 201, end 200.
        let group: [UInt8] = [0xC3, 0x0C, 0x08, 0x01, 0xCB, 0x0C, 0xCC, 0x0C, 0xC4, 0x0C]
        let message = try AllTypes(serializedBytes: [0x28, 0x01] + group)
        #expect(message.fInt32 == 1)
        #expect(message.unknownFields.bytes == group)
        #expect(message.serializedBytes() == [0x28, 0x01] + group)
    }

    @Test("recursive messages nest and round trip")
    func recursion() throws {
        let leaf = Conformance_V1_Node(name: "leaf", extra: .weight(3))
        var node = leaf
        for depth in 0..<20 {
            node = Conformance_V1_Node(name: "n\(depth)", child: node, children: [leaf, leaf], extra: .alternate(leaf))
        }
        #expect(try Conformance_V1_Node(serializedBytes: node.serializedBytes()) == node)
    }

    @Test("nesting up to the depth limit decodes; one level more fails")
    func depthLimit() throws {
        func nested(_ depth: Int) -> [UInt8] {
            var bytes: [UInt8] = []
            for _ in 0..<depth { bytes = [0x12] + varint(bytes.count) + bytes }
            return bytes
        }
        _ = try Conformance_V1_Node(serializedBytes: nested(100))
        // The 101st embedded message is refused; every enclosing message names the field it was in.
        assertDecodeFails(
            Conformance_V1_Node.self, nested(101), .depthLimitExceeded, path: Array(repeating: "child", count: 101))
        _ = try Conformance_V1_Node(serializedBytes: nested(5), options: DecodingOptions(maxDepth: 5))
        assertDecodeFails(
            Conformance_V1_Node.self, nested(6), .depthLimitExceeded, path: Array(repeating: "child", count: 6),
            options: DecodingOptions(maxDepth: 5)
        )
    }

    @Test("merging decodes into an existing message")
    func mergeAPI() throws {
        var message = AllTypes(fInt32: 1, rInt32: [1])
        try message.merge(serializedBytes: [0x18, 0x02, 0xC8, 0x01, 0x02])
        #expect(message == AllTypes(fInt64: 2, fInt32: 1, rInt32: [1, 2]))
        let slice = ([0xFF, 0x28, 0x03] as [UInt8])[1...]
        #expect(try AllTypes(serializedBytes: slice).fInt32 == 3)
    }

    @Test("serialize(into:) writes into a caller's buffer and refuses one that is too small")
    func serializeInto() {
        let message = AllTypes(fInt32: 150)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 8, alignment: 1)
        defer { buffer.deallocate() }
        #expect(message.serialize(into: buffer) == 3)
        #expect(Array(buffer.prefix(3)) == [0x28, 0x96, 0x01])
        #expect(message.serialize(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<2])) == nil)
    }

    @Test("well-known types convert to and from Swift values")
    func wellKnownTypes() throws {
        let timestamp = Google_Protobuf_Timestamp(secondsSince1970: 1.5)
        #expect(timestamp == Google_Protobuf_Timestamp(seconds: 1, nanos: 500_000_000))
        #expect(timestamp.secondsSince1970 == 1.5)
        let duration = Google_Protobuf_Duration(.milliseconds(1500))
        #expect(duration == Google_Protobuf_Duration(seconds: 1, nanos: 500_000_000))
        #expect(duration.duration == .milliseconds(1500))
        try assertEncodes(Google_Protobuf_Empty(), [])
        try assertEncodes(timestamp, [0x08, 0x01, 0x10, 0x80, 0xCA, 0xB5, 0xEE, 0x01])
    }

    @Test("service descriptors carry paths and streaming kinds")
    func serviceDescriptors() {
        typealias Service = Conformance_V1_Conformance
        #expect(Service.Method.Unary.descriptor.path == "/conformance.v1.Conformance/Unary")
        #expect(Service.Method.Unary.descriptor.kind == .unary)
        #expect(Service.Method.ClientStream.descriptor.kind == .clientStreaming)
        #expect(Service.Method.ServerStream.descriptor.kind == .serverStreaming)
        #expect(Service.Method.Bidi.descriptor.kind == .bidirectionalStreaming)
        #expect(Service.Method.Bidi.descriptor.inputType == "conformance.v1.Node")
        #expect(Service.descriptor.methods.map(\.method) == ["Unary", "ClientStream", "ServerStream", "Bidi"])
        #expect(Service.Method.Unary.Input.self == Conformance_V1_AllTypes.self)
    }
}

func varint(_ value: Int) -> [UInt8] {
    var v = UInt64(value)
    var out: [UInt8] = []
    while v >= 0x80 {
        out.append(UInt8(v & 0x7F) | 0x80)
        v >>= 7
    }
    out.append(UInt8(v))
    return out
}
