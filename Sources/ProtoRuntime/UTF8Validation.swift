// UTF-8 validation for `string` fields.
//
// The standard library's `String(validating:as:)` is generic and not specialised for byte buffers, and it looked
// up generic metadata on every call: a quarter of the decoding time of string-heavy messages. Validating here and
// then building the string with `String(unsafeUninitializedCapacity:initializingUTF8With:)` is fast: for short
// ASCII strings (the common case) it checks one bit instead of scanning again, and it copies the bytes once.

@usableFromInline
enum UTF8Validation {
    /// Whether `bytes` is well-formed UTF-8 (RFC 3629: no overlongs, no surrogates, nothing above U+10FFFF).
    @inlinable
    static func isValid(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        guard let start = bytes.baseAddress else { return true }
        if isASCII(start, bytes.count) { return true }
        return validateMultibyte(from: start, to: start + bytes.count)
    }

    /// Whether no byte has its top bit set: OR everything together, eight bytes at a time, without branching on the
    /// bytes. The tail is covered by one more load that overlaps what was read (strings of 4 to 7 bytes take two
    /// overlapping 4-byte loads), so short strings cost no byte-by-byte loop and no mispredicted exit.
    @inlinable @inline(__always)
    static func isASCII(_ start: UnsafePointer<UInt8>, _ count: Int) -> Bool {
        let p = UnsafeRawPointer(start)
        var accumulated: UInt64
        if count >= 8 {
            accumulated = p.loadUnaligned(fromByteOffset: count - 8, as: UInt64.self)
            var offset = 0
            while offset < count - 8 {
                accumulated |= p.loadUnaligned(fromByteOffset: offset, as: UInt64.self)
                offset += 8
            }
        } else if count >= 4 {
            accumulated = UInt64(
                p.loadUnaligned(as: UInt32.self) | p.loadUnaligned(fromByteOffset: count - 4, as: UInt32.self))
        } else if count > 0 {
            // 1 to 3 bytes: the first, the middle and the last (some of them the same byte).
            accumulated = UInt64(
                p.load(as: UInt8.self) | p.load(fromByteOffset: count >> 1, as: UInt8.self)
                    | p.load(fromByteOffset: count - 1, as: UInt8.self))
        } else {
            return true
        }
        return accumulated & 0x8080_8080_8080_8080 == 0
    }

    @usableFromInline
    static func validateMultibyte(from start: UnsafePointer<UInt8>, to end: UnsafePointer<UInt8>) -> Bool {
        var p = start
        while p < end {
            let b0 = p.pointee
            if b0 < 0x80 {
                p += 1
                continue
            }
            let remaining = end - p
            if b0 < 0xC2 { return false }  // continuation byte or overlong 2-byte lead
            if b0 < 0xE0 {
                guard remaining >= 2, p[1] & 0xC0 == 0x80 else { return false }
                p += 2
                continue
            }
            if b0 < 0xF0 {
                guard remaining >= 3, p[1] & 0xC0 == 0x80, p[2] & 0xC0 == 0x80 else { return false }
                if b0 == 0xE0 && p[1] < 0xA0 { return false }  // overlong
                if b0 == 0xED && p[1] >= 0xA0 { return false }  // UTF-16 surrogates
                p += 3
                continue
            }
            guard b0 < 0xF5, remaining >= 4, p[1] & 0xC0 == 0x80, p[2] & 0xC0 == 0x80, p[3] & 0xC0 == 0x80 else {
                return false
            }
            if b0 == 0xF0 && p[1] < 0x90 { return false }  // overlong
            if b0 == 0xF4 && p[1] >= 0x90 { return false }  // above U+10FFFF
            p += 4
        }
        return true
    }
}
