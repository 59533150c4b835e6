public import ProtoRuntime

extension Google_Protobuf_Timestamp {
    /// A timestamp from seconds since the Unix epoch, e.g. `Date().timeIntervalSince1970`.
    public init(secondsSince1970 interval: Double) {
        let seconds = interval.rounded(.down)
        self.init(seconds: Int64(seconds), nanos: Int32(((interval - seconds) * 1e9).rounded()))
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
