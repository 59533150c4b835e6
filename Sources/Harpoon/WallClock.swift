internal import Foundation

/// Wall-clock time for Harpoon's rows and outbox (seconds since the Unix epoch): the system's in production, one a
/// test sets and advances.
package protocol WallClock: Sendable {
    func now() -> Double
}

/// The system's wall clock.
package struct SystemClock: WallClock {
    package init() {}
    package func now() -> Double { Date().timeIntervalSince1970 }
}
