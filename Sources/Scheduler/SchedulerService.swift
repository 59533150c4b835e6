internal import CoreMetrics
internal import Logging
internal import RequestContext
package import SchedulerAPI

/// `scheduler.v2.Scheduler` over a ``Fleet``.
package struct SchedulerService: Scheduler_V2_Scheduler.ServiceProtocol {
    package let fleet: Fleet
    private let logger = Logger(label: "scheduler")

    package init(fleet: Fleet) {
        self.fleet = fleet
    }

    package func reportFleet(
        request: Scheduler_V2_ReportFleetRequest, context: ServerContext
    ) async throws -> Scheduler_V2_ReportFleetResponse {
        let (known, needsComplete) = fleet.report(
            request.hypervisors, region: request.region, complete: request.complete)
        return Scheduler_V2_ReportFleetResponse(known: UInt32(clamping: known), needsComplete: needsComplete)
    }

    package func markUnresponsive(
        request: Scheduler_V2_MarkUnresponsiveRequest, context: ServerContext
    ) async throws -> Scheduler_V2_MarkUnresponsiveResponse {
        fleet.markUnresponsive(request.hypervisorIds, router: request.router)
        return Scheduler_V2_MarkUnresponsiveResponse()
    }

    private static func validate(_ request: Scheduler_V2_PlaceRequest) throws {
        guard let size = request.size, size.vcpus > 0, size.memoryMb > 0 else {
            throw RPCError(code: .invalidArgument, message: "a placement needs a size with vCPUs and memory")
        }
        guard !request.region.isEmpty else {
            throw RPCError(code: .invalidArgument, message: "a placement needs a region")
        }
    }

    package func place(
        request: Scheduler_V2_PlaceRequest, context: ServerContext
    ) async throws -> Scheduler_V2_PlaceResponse {
        try Self.validate(request)
        let started = Spans.now
        return counted(fleet.place(request), for: request, started: started)
    }

    /// Counts a placement by region and outcome (`scheduler_placements_total{region,outcome}`) and, at debug, logs it
    /// with the request it serves.
    private func counted(
        _ response: Scheduler_V2_PlaceResponse, for request: Scheduler_V2_PlaceRequest, started: UInt64
    ) -> Scheduler_V2_PlaceResponse {
        let outcome = PlacementRules.outcome(response)
        Counter(label: "scheduler_placements_total", dimensions: [("region", request.region), ("outcome", outcome)])
            .increment()
        Spans.resumed(
            "placement", traceparent: request.traceparent, start: started,
            attributes: [
                "event.id": request.eventId, "placement.outcome": outcome, "hypervisor.id": response.hypervisorId,
            ]
        )
        logger.debug(
            "placement", resuming: request.requestId, traceparent: request.traceparent,
            metadata: [
                "event_id": .string(request.eventId), "region": .string(request.region), "outcome": .string(outcome),
                "hypervisor_id": .string(response.hypervisorId),
            ])
        return response
    }

    package func placeBatch(
        request: Scheduler_V2_PlaceBatchRequest, context: ServerContext
    ) async throws -> Scheduler_V2_PlaceBatchResponse {
        Scheduler_V2_PlaceBatchResponse(
            outcomes: request.requests.map { placement in
                do {
                    try Self.validate(placement)
                    let started = Spans.now
                    return Scheduler_V2_PlaceOutcome(
                        response: counted(fleet.place(placement), for: placement, started: started))
                } catch {
                    let (code, message) = RPCError.batchedStatus(of: error)
                    return Scheduler_V2_PlaceOutcome(errorCode: code, errorMessage: message)
                }
            })
    }

    package func explain(
        request: Scheduler_V2_PlaceRequest, context: ServerContext
    ) async throws -> Scheduler_V2_PlaceResponse {
        try Self.validate(request)
        return fleet.explain(request)
    }

    package func release(
        request: Scheduler_V2_ReleaseRequest, context: ServerContext
    ) async throws -> Scheduler_V2_ReleaseResponse {
        Scheduler_V2_ReleaseResponse(released: fleet.release(eventId: request.eventId, completed: request.completed))
    }
}
