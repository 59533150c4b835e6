// libFuzzer entry point for the message decoder (`make fuzz`).
//
// Every input is decoded as two message types that between them have every field shape (AllTypes) and recursion
// (Node). Whatever decodes must re-encode, and the re-encoding must decode again; any trap or sanitizer report is
// a finding, and libFuzzer keeps the input under .build-fuzz/artifacts.
import ProtoRuntime

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = UnsafeRawBufferPointer(start: data, count: size)
    roundTrip(Conformance_V1_AllTypes.self, bytes)
    roundTrip(Conformance_V1_Node.self, bytes)
    return 0
}

func roundTrip<M: ProtoMessage>(_: M.Type, _ bytes: UnsafeRawBufferPointer) {
    var message = M()
    do {
        try message.merge(rawBuffer: bytes, options: DecodingOptions(maxDepth: 100, maxSize: 1 << 20))
    } catch {
        return  // a clean, typed error is the expected outcome for most inputs
    }
    let encoded = message.serializedBytes()
    precondition(encoded.count == message.encodedSize(), "size pass disagrees with the encoding")
    do {
        let again = try M(serializedBytes: encoded)
        // NaN floats are never equal to themselves, so compare encodings, not values.
        precondition(again.serializedBytes().count == encoded.count, "re-encoding changed size")
    } catch {
        preconditionFailure("re-encoding of \(M.protoMessageName) does not decode: \(error)")
    }
}
