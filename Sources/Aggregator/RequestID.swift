internal import Synchronization

/// Request ids: random UUIDs (version 4), lowercase, as DigitalOcean's `x-request-id` looks.
///
/// Drawn from xoshiro256** seeded once from the system's generator: `UUID()` asked the system for randomness on
/// every request (a system call, 3% of a `GET` under load). The ids double as idempotency keys of mutations, so they
/// must not repeat: 122 random bits from a 256-bit state seeded by the system make that as unlikely as with `UUID()`.
enum RequestID {
    private static let state = Mutex<(UInt64, UInt64, UInt64, UInt64)>(
        {
            var system = SystemRandomNumberGenerator()
            var seed = (
                system.next() as UInt64, system.next() as UInt64, system.next() as UInt64, system.next() as UInt64
            )
            if seed == (0, 0, 0, 0) { seed.0 = 1 }  // the one state xoshiro cannot leave
            return seed
        }())

    /// xoshiro256** (Blackman and Vigna).
    private static func next64(_ s: inout (UInt64, UInt64, UInt64, UInt64)) -> UInt64 {
        let result = (s.1 &* 5).rotatedLeft(7) &* 9
        let t = s.1 << 17
        s.2 ^= s.0
        s.3 ^= s.1
        s.1 ^= s.2
        s.0 ^= s.3
        s.2 ^= t
        s.3 = s.3.rotatedLeft(45)
        return result
    }

    /// A new id, e.g. `0f8c6b1e-3a5d-4e2b-9c71-2b1d8e6f4a10`.
    static func next() -> String {
        let (high, low) = state.withLock { s in (next64(&s), next64(&s)) }
        let versioned = (high & ~0xF000) | 0x4000  // version 4
        let varianted = (low & ~(0xC << 60)) | (0x8 << 60)  // variant 10xx
        var bytes = [UInt8]()
        bytes.reserveCapacity(36)
        let hex = Array("0123456789abcdef".utf8)
        for (index, word) in [versioned, varianted].enumerated() {
            for nibble in stride(from: 60, through: 0, by: -4) {
                let position = index * 16 + (60 - nibble) / 4
                if position == 8 || position == 12 || position == 16 || position == 20 {
                    bytes.append(UInt8(ascii: "-"))
                }
                bytes.append(hex[Int((word >> UInt64(nibble)) & 0xF)])
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

extension UInt64 {
    fileprivate func rotatedLeft(_ count: UInt64) -> UInt64 { (self << count) | (self >> (64 - count)) }
}
