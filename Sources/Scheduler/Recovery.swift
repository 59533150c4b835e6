package import ShoalRPC

/// Where a starting scheduler learns the placements still in flight: Harpoon in production.
package protocol InFlightPlacementSource: Sendable {
    /// Every placement whose event has not finished.
    func placementsInFlight() async throws -> [HeldPlacement]
}

extension Fleet {
    /// How `recover` waits between failed loads: 100 ms doubling to 1 s.
    package static let recoveryBackoff = Backoff(
        initial: .milliseconds(100), multiplier: 2, maximum: .seconds(1), jitter: .proportional(0.2))

    /// Loads the placements in flight from `source` and restores them (``restore(_:)``), trying again after a failure
    /// (waiting as `backoff` says) until it succeeds or the task is cancelled; returns whether it loaded. `failed`
    /// hears each failure, for the log: placements wait meanwhile, so an operator must be able to see why.
    @discardableResult
    package func recover(
        from source: any InFlightPlacementSource, backoff: Backoff = Fleet.recoveryBackoff,
        failed: @Sendable (any Error) -> Void = { _ in }
    ) async -> Bool {
        var failures = 0
        while !Task.isCancelled {
            do {
                restore(try await source.placementsInFlight())
                return true
            } catch {
                failed(error)
                failures += 1
                do { try await Task.sleep(for: backoff.delay(afterFailures: failures)) } catch { return false }
            }
        }
        return false
    }
}
