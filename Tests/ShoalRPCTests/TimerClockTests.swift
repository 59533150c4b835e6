import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing

@testable import ShoalRPC

@Suite("the manual timer clock")
struct TimerClockTests {
    @Test(
        "timers fire only when time is advanced past them, in deadline order, on their event loop; cancelled ones never"
    )
    func firesInOrder() async throws {
        let clock = ManualTimerClock()
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let fired = NIOLockedValueBox<[String]>([])
        let start = clock.now()
        _ = clock.schedule(in: .milliseconds(30), on: loop) {
            #expect(loop.inEventLoop)
            fired.withLockedValue { $0.append("30") }
        }
        _ = clock.schedule(in: .milliseconds(10), on: loop) { fired.withLockedValue { $0.append("10") } }
        let cancelled = clock.schedule(in: .milliseconds(20), on: loop) { fired.withLockedValue { $0.append("20") } }
        cancelled.cancel()
        #expect(clock.pendingTimerCount == 2)
        await clock.advance(by: .milliseconds(9))
        #expect(fired.withLockedValue { $0 }.isEmpty)
        await clock.advance(by: .milliseconds(25))
        #expect(fired.withLockedValue { $0 } == ["10", "30"])
        #expect(clock.now() - start == .milliseconds(34))
        #expect(clock.pendingTimerCount == 0)
    }

    @Test("a timer armed by a firing timer runs in the same advance if it falls due")
    func chained() async {
        let clock = ManualTimerClock()
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let ticks = NIOLockedValueBox(0)
        @Sendable func arm() {
            _ = clock.schedule(in: .milliseconds(100), on: loop) {
                ticks.withLockedValue { $0 += 1 }
                arm()
            }
        }
        arm()
        await clock.advance(by: .milliseconds(350))
        #expect(ticks.withLockedValue { $0 } == 3)
        #expect(clock.pendingTimerCount == 1)
    }

    @Test("waitForTimers returns once that many timers are armed")
    func waits() async {
        let clock = ManualTimerClock()
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        async let armed: Void = clock.waitForTimers(count: 2)
        _ = clock.schedule(in: .seconds(1), on: loop) {}
        _ = clock.schedule(in: .seconds(1), on: loop) {}
        await armed
        #expect(clock.pendingTimerCount == 2)
    }
}
