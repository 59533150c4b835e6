/// The text encodings of gRPC's HTTP/2 headers: `grpc-timeout` and the percent-encoded `grpc-message`.
package enum GRPCTimeout {
    /// Encodes a timeout as at most 8 digits and a unit: the finest unit that fits, rounded up, so the deadline the
    /// peer sees is never earlier than the caller's.
    package static func encode(nanoseconds: Int64) -> String {
        let value = max(nanoseconds, 0)
        let units: [(Character, Int64)] = [
            ("n", 1), ("u", 1_000), ("m", 1_000_000), ("S", 1_000_000_000), ("M", 60_000_000_000),
            ("H", 3_600_000_000_000),
        ]
        for (unit, scale) in units {
            let amount = (value + scale - 1) / scale
            if amount <= 99_999_999 { return "\(amount)\(unit)" }
        }
        return "99999999H"
    }

    /// Parses `grpc-timeout`: 1 to 8 ASCII digits and one of `H M S m u n`; `nil` if malformed.
    package static func decode(_ text: String) -> Int64? {
        let bytes = Array(text.utf8)
        guard bytes.count >= 2, bytes.count <= 9, let unit = bytes.last else { return nil }
        var amount: Int64 = 0
        for byte in bytes.dropLast() {
            guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
            amount = amount * 10 + Int64(byte - UInt8(ascii: "0"))
        }
        let scale: Int64
        switch unit {
        case UInt8(ascii: "H"): scale = 3_600_000_000_000
        case UInt8(ascii: "M"): scale = 60_000_000_000
        case UInt8(ascii: "S"): scale = 1_000_000_000
        case UInt8(ascii: "m"): scale = 1_000_000
        case UInt8(ascii: "u"): scale = 1_000
        case UInt8(ascii: "n"): scale = 1
        default: return nil
        }
        let (product, overflow) = amount.multipliedReportingOverflow(by: scale)
        return overflow ? Int64.max : product
    }
}

/// `grpc-message` is percent-encoded UTF-8: bytes outside printable ASCII, and `%` itself, become `%XX`.
package enum PercentEncoding {
    private static let hex = Array("0123456789ABCDEF".utf8)

    /// A space at either end is encoded too: HTTP/2 rejects header values with surrounding whitespace.
    package static func encode(_ text: String) -> String {
        var out: [UInt8] = []
        let bytes = Array(text.utf8)
        out.reserveCapacity(bytes.count)
        for (index, byte) in bytes.enumerated() {
            let edgeSpace = byte == 0x20 && (index == 0 || index == bytes.count - 1)
            if byte >= 0x20, byte <= 0x7E, byte != UInt8(ascii: "%"), !edgeSpace {
                out.append(byte)
            } else {
                out.append(UInt8(ascii: "%"))
                out.append(hex[Int(byte >> 4)])
                out.append(hex[Int(byte & 0x0F)])
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Decodes leniently, as the spec asks: a `%` not followed by two hex digits is kept as it is.
    package static func decode(_ text: String) -> String {
        let bytes = Array(text.utf8)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        var index = 0
        while index < bytes.count {
            if bytes[index] == UInt8(ascii: "%"), index + 2 < bytes.count,
                let high = hexValue(bytes[index + 1]), let low = hexValue(bytes[index + 2])
            {
                out.append(high << 4 | low)
                index += 3
            } else {
                out.append(bytes[index])
                index += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}
