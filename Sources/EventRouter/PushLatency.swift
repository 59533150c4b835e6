/// Push latencies (router has the event → agent has it) as counts in logarithmic buckets: bucket `i` holds latencies of
/// at least 2^(i/4) µs and less than 2^((i+1)/4) µs, so each bucket is about 19% wide, from 1 µs to about 1 minute.
/// Fixed memory however many are recorded; histograms from several routers add up bucket by bucket.
package struct PushLatency: Sendable, Equatable {
    package static let bucketCount = 104
    package private(set) var counts = [UInt64](repeating: 0, count: bucketCount)

    package init() {}

    /// The bucket for `micros`: the last for anything beyond it.
    package static func bucket(micros: UInt64) -> Int {
        guard micros > 1 else { return 0 }
        // floor(4 · log2(micros)), from the bit length and the next two bits (the quarter within the octave),
        // refined so that 2^(i/4) ≤ micros holds exactly at each bucket's lower edge.
        let octave = 63 - micros.leadingZeroBitCount
        var bucket = octave * 4
        for quarter in 1...3 where Double(micros) >= lowerBound(octave * 4 + quarter) { bucket = octave * 4 + quarter }
        return min(bucket, bucketCount - 1)
    }

    /// The least latency, µs, bucket `index` holds.
    package static func lowerBound(_ index: Int) -> Double {
        var value = 1.0
        for _ in 0..<(index / 4) { value *= 2 }
        let quarters = [1.0, 1.189_207_115_002_721, 1.414_213_562_373_095, 1.681_792_830_507_429]
        return value * quarters[index % 4]
    }

    package mutating func record(micros: UInt64) {
        counts[Self.bucket(micros: micros)] += 1
    }

    package var total: UInt64 { counts.reduce(0, +) }
}
