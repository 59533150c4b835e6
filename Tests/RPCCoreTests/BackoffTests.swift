import RPCCore
import Testing

@Suite("backoff")
struct BackoffTests {
    @Test("gRPC's connection backoff: 1 s, ×1.6, ±20 %, 120 s cap")
    func grpcSchedule() {
        let backoff = Backoff.grpcConnection
        #expect(backoff.delay(afterFailures: 1, unit: 0.5) == .seconds(1))
        #expect(backoff.delay(afterFailures: 2, unit: 0.5) == .milliseconds(1600))
        #expect(backoff.delay(afterFailures: 3, unit: 0.5) == .milliseconds(2560))
        #expect(backoff.delay(afterFailures: 30, unit: 0.5) == .seconds(120))
        #expect(backoff.delay(afterFailures: 1, unit: 1) == .milliseconds(1200))
        #expect(backoff.delay(afterFailures: 1, unit: 0) == .milliseconds(800))
    }

    @Test("the ceiling doubles from the initial wait and stops at the maximum; 0 failures count as 1")
    func ceiling() {
        let backoff = Backoff(initial: .milliseconds(100), multiplier: 2, maximum: .seconds(1), jitter: .none)
        #expect(backoff.ceiling(afterFailures: 0) == .milliseconds(100))
        #expect(backoff.ceiling(afterFailures: 1) == .milliseconds(100))
        #expect(backoff.ceiling(afterFailures: 4) == .milliseconds(800))
        #expect(backoff.ceiling(afterFailures: 5) == .seconds(1))
        #expect(backoff.ceiling(afterFailures: Int.max) == .seconds(1))
        #expect(Backoff(initial: .seconds(9), maximum: .seconds(2)).ceiling(afterFailures: 1) == .seconds(2))
    }

    @Test("jitter: none is exact, full spans [0, d], half [d/2, d], proportional d ± f")
    func jitter() {
        let base = Backoff(initial: .seconds(2), multiplier: 2, maximum: .seconds(60), jitter: .none)
        var full = base
        var half = base
        var proportional = base
        full.jitter = .full
        half.jitter = .half
        proportional.jitter = .proportional(0.5)
        #expect(base.delay(afterFailures: 1, unit: 0) == .seconds(2))
        #expect(full.delay(afterFailures: 1, unit: 0) == .zero)
        #expect(full.delay(afterFailures: 1, unit: 1) == .seconds(2))
        #expect(half.delay(afterFailures: 1, unit: 0) == .seconds(1))
        #expect(half.delay(afterFailures: 1, unit: 1) == .seconds(2))
        #expect(proportional.delay(afterFailures: 1, unit: 0) == .seconds(1))
        #expect(proportional.delay(afterFailures: 1, unit: 1) == .seconds(3))
        // Out-of-range units are clamped; random ones stay in range.
        #expect(full.delay(afterFailures: 1, unit: 7) == .seconds(2))
        for _ in 0..<200 {
            let delay = half.delay(afterFailures: 3)
            #expect(delay >= .seconds(4) && delay <= .seconds(8))
        }
    }
}
