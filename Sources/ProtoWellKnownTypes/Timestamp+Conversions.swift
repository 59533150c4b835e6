extension Google_Protobuf_Timestamp {
    /// A timestamp from seconds since the Unix epoch, e.g. `Date().timeIntervalSince1970`.
    public init(secondsSince1970 interval: Double) {
        // Integer conversions only: the floor and rounding functions would pull in libm.
        var seconds = Int64(interval)
        if Double(seconds) > interval { seconds -= 1 }
        var nanos = Int64((interval - Double(seconds)) * 1e9 + 0.5)
        if nanos >= 1_000_000_000 {
            seconds += 1
            nanos -= 1_000_000_000
        }
        self.init(seconds: seconds, nanos: Int32(nanos))
    }

    /// Seconds since the Unix epoch as a `Double`.
    public var secondsSince1970: Double { Double(seconds) + Double(nanos) / 1e9 }
}

extension Google_Protobuf_Duration {
    /// A protobuf duration from a Swift `Duration`.
    public init(_ duration: Swift.Duration) {
        let (seconds, attoseconds) = duration.components
        self.init(seconds: seconds, nanos: Int32(attoseconds / 1_000_000_000))
    }

    /// The span as a Swift `Duration`.
    public var duration: Swift.Duration {
        .seconds(seconds) + .nanoseconds(Int64(nanos))
    }
}
