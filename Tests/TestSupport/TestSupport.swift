/// Polls `condition` every few milliseconds until it holds or `timeout` passes; returns whether it held.
///
/// Tests wait for conditions this way, never by sleeping a fixed time.
package func eventually(timeout: Duration = .seconds(20), _ condition: () async throws -> Bool) async rethrows -> Bool {
    let deadline = ContinuousClock.now.advanced(by: timeout)
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        try? await Task.sleep(for: .milliseconds(5))
    }
    return try await condition()
}

/// A seeded generator (splitmix64), so every random test is reproducible from its seed.
package struct SeededRandom: RandomNumberGenerator {
    package var state: UInt64

    package init(seed: UInt64) { state = seed &* 0x2545_F491_4F6C_DD1D &+ 1 }

    package mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    package mutating func chance(_ percent: Int) -> Bool { Int(next() % 100) < percent }
}
