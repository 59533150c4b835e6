/// Exponential backoff: how every Shoal component waits between attempts (connections, call retries, outbox
/// redelivery, transition retries, agents reconnecting, recovery, restarts).
///
/// The wait after the `n`th failure in a row is `initial × multiplier^(n-1)`, capped at `maximum`, then spread by
/// `jitter` so that many clients failing at once do not retry at once.
///
/// ```swift
/// let backoff = Backoff(initial: .milliseconds(100), multiplier: 2, maximum: .seconds(5), jitter: .full)
/// try await Task.sleep(for: backoff.delay(afterFailures: failures))
/// ```
public struct Backoff: Sendable, Hashable {
    /// How a delay is spread.
    public enum Jitter: Sendable, Hashable {
        /// Exactly the computed delay.
        case none
        /// Uniform in `[0, delay]` ("full jitter").
        case full
        /// Uniform in `[delay / 2, delay]`: never much sooner than planned.
        case half
        /// Uniform in `delay × [1 - f, 1 + f]` (gRPC's connection backoff uses 0.2).
        case proportional(Double)
    }

    /// The wait after the first failure (before jitter).
    public var initial: Duration
    /// The growth per failure.
    public var multiplier: Double
    /// The longest wait (before jitter).
    public var maximum: Duration
    public var jitter: Jitter

    public init(initial: Duration, multiplier: Double = 2, maximum: Duration, jitter: Jitter = .full) {
        self.initial = initial
        self.multiplier = multiplier
        self.maximum = maximum
        self.jitter = jitter
    }

    /// gRPC's connection backoff (connection-backoff.md): 1 s, ×1.6 per failure, ±20 %, at most 120 s.
    public static let grpcConnection = Backoff(
        initial: .seconds(1), multiplier: 1.6, maximum: .seconds(120), jitter: .proportional(0.2))

    /// The wait after `failures` consecutive failures (1 for the first; 0 counts as 1), before jitter.
    public func ceiling(afterFailures failures: Int) -> Duration {
        let cap = Self.seconds(maximum)
        var seconds = min(Self.seconds(initial), cap)
        var remaining = max(failures, 1) - 1
        while remaining > 0, seconds < cap {
            seconds = min(seconds * multiplier, cap)
            remaining -= 1
        }
        return Self.duration(seconds)
    }

    /// The wait after `failures` consecutive failures, jittered by `unit`, a number in `[0, 1]` (random by default;
    /// tests pass their own).
    public func delay(afterFailures failures: Int, unit: Double = Double.random(in: 0...1)) -> Duration {
        let ceiling = Self.seconds(ceiling(afterFailures: failures))
        let unit = min(max(unit, 0), 1)
        let seconds: Double =
            switch jitter {
            case .none: ceiling
            case .full: ceiling * unit
            case .half: ceiling * (0.5 + 0.5 * unit)
            case .proportional(let fraction): ceiling * (1 + fraction * (2 * unit - 1))
            }
        return Self.duration(max(seconds, 0))
    }

    /// A duration in seconds, as a `Double`.
    public static func seconds(_ duration: Duration) -> Double {
        let (seconds, attoseconds) = duration.components
        return Double(seconds) + Double(attoseconds) / 1e18
    }

    private static func duration(_ seconds: Double) -> Duration {
        .nanoseconds(Int64(min(seconds, Double(Int64.max) / 1e9) * 1e9))
    }
}
