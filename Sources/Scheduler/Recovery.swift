/// Where a starting scheduler learns the placements still in flight: Harpoon in production.
package protocol InFlightPlacementSource: Sendable {
    /// Every placement whose event has not finished.
    func placementsInFlight() async throws -> [HeldPlacement]
}

extension Fleet {
    /// Loads the placements in flight from `source` and restores them (``restore(_:)``), trying again after a failure
    /// (100 ms doubling to 1 s) until it succeeds or the task is cancelled; returns whether it loaded. `failed` hears
    /// each failure, for the log: placements wait meanwhile, so an operator must be able to see why.
    @discardableResult
    package func recover(from source: any InFlightPlacementSource, failed: @Sendable (any Error) -> Void = { _ in }) async -> Bool {
        var delay = Duration.milliseconds(100)
        while !Task.isCancelled {
            do {
                restore(try await source.placementsInFlight())
                return true
            } catch {
                failed(error)
                do { try await Task.sleep(for: delay) } catch { return false }
                delay = min(delay * 2, .seconds(1))
            }
        }
        return false
    }
}
