package import HarpoonAPI
package import ReservedIPAPI

/// `reservedip.v1.ReservedIPs`: the orchestrator's API over a ``ReservedIPStore`` and a ``TransitionDriver``.
///
/// A transition is checked and recorded in one transaction, then its first Harpoon event is created before the call
/// returns, so a droplet busy with another event is refused (FAILED_PRECONDITION) and leaves nothing behind. If Harpoon
/// cannot be reached for that first event, the action is already durable and its driver keeps trying.
package struct ReservedIPService: Reservedip_V1_ReservedIPs.ServiceProtocol {
    package let store: any ReservedIPStore
    package let driver: TransitionDriver
    private let harpoon: Harpoon_V1_Harpoon.Client

    package init(store: any ReservedIPStore, driver: TransitionDriver, harpoon: RPCClient) {
        self.store = store
        self.driver = driver
        self.harpoon = Harpoon_V1_Harpoon.Client(harpoon)
    }

    private static func pageSize(_ requested: UInt32) -> Int {
        requested == 0 ? 20 : min(Int(requested), 200)
    }

    private static func require(customer: String) throws(RPCError) {
        guard !customer.isEmpty else { throw RPCError(code: .invalidArgument, message: "customer is required") }
    }

    private static func require(ip: String) throws(RPCError) {
        guard IPv4.parse(ip) != nil else {
            throw RPCError(code: .invalidArgument, message: "'\(ip)' is not an IPv4 address")
        }
    }

    /// The customer's droplet, active, and in `region` if one is given: what an IP may be assigned to.
    private func assignableDroplet(_ id: Int64, customer: String, region: String?) async throws -> Harpoon_V1_Droplet {
        guard id > 0 else { throw RPCError(code: .invalidArgument, message: "droplet_id is required") }
        let droplet: Harpoon_V1_Droplet
        do {
            droplet = try await harpoon.getDroplet(
                Harpoon_V1_GetDropletRequest(id: id, customer: customer),
                options: CallOptions(timeout: .seconds(5), retry: RetryPolicy())
            )
        } catch let error as RPCError where error.code == .notFound {
            throw RPCError(code: .notFound, message: "droplet \(id) not found")
        }
        guard droplet.status == .active else {
            throw RPCError(code: .failedPrecondition, message: "Droplet \(id) is not active.")
        }
        if let region, droplet.region != region {
            throw RPCError(
                code: .failedPrecondition,
                message: "The reserved IP is in \(region); droplet \(id) is in \(droplet.region).")
        }
        return droplet
    }

    /// Creates the first step's event for a new action (refusing a busy droplet), then drives the rest.
    private func launch(
        _ state: ActionState, isNew: Bool, reservation: Bool = false
    ) async throws -> Reservedip_V1_Action {
        guard isNew else {
            driver.drive(state.action.id)  // a retried request: make sure it is being driven (a no-op if it is)
            return state.action
        }
        do {
            _ = try await driver.createEvent(for: state, refuseIfBusy: true, deadline: .now + .seconds(2))
        } catch let error as RPCError where error.code == .failedPrecondition || error.code == .notFound {
            try await store.abandon(state, reservation: reservation)
            throw error.code == .notFound
                ? RPCError(code: .notFound, message: "droplet \(state.currentStep?.dropletId ?? 0) not found") : error
        } catch {
            // Harpoon is unreachable for now: the action is recorded, its driver keeps trying.
        }
        driver.drive(state.action.id)
        return state.action
    }

    package func reserve(
        request: Reservedip_V1_ReserveRequest, context: ServerContext
    ) async throws -> Reservedip_V1_ReserveResponse {
        try Self.require(customer: request.customer)
        switch (request.region.isEmpty, request.dropletId == 0) {
        case (false, false):
            throw RPCError(code: .invalidArgument, message: "give a region or a droplet_id, not both")
        case (true, true):
            throw RPCError(code: .invalidArgument, message: "a region or a droplet_id is required")
        case (false, true):
            guard store.pools.blocks[request.region] != nil else {
                throw RPCError(code: .invalidArgument, message: "region \(request.region) has no reserved IPs")
            }
            let ip = try await store.reserve(
                customer: request.customer, region: request.region, projectId: request.projectId,
                key: request.idempotencyKey)
            return Reservedip_V1_ReserveResponse(reservedIp: ip)
        case (true, false):
            let droplet = try await assignableDroplet(request.dropletId, customer: request.customer, region: nil)
            let (ip, state, isNew) = try await store.reserveToDroplet(
                customer: request.customer, region: droplet.region, projectId: request.projectId, dropletId: droplet.id,
                key: request.idempotencyKey
            )
            let action = try await launch(state, isNew: isNew, reservation: true)
            return Reservedip_V1_ReserveResponse(reservedIp: ip, action: action)
        }
    }

    package func assign(
        request: Reservedip_V1_AssignRequest, context: ServerContext
    ) async throws -> Reservedip_V1_Action {
        try Self.require(customer: request.customer)
        try Self.require(ip: request.ip)
        guard let ip = try await store.reservedIP(request.ip, customer: request.customer) else {
            throw ReservedIPError.notFound("reserved IP \(request.ip)")
        }
        let droplet = try await assignableDroplet(request.dropletId, customer: request.customer, region: ip.region)
        let (state, isNew) = try await store.beginAssign(
            customer: request.customer, ip: request.ip, dropletId: droplet.id, key: request.idempotencyKey)
        return try await launch(state, isNew: isNew)
    }

    package func unassign(
        request: Reservedip_V1_UnassignRequest, context: ServerContext
    ) async throws -> Reservedip_V1_Action {
        try Self.require(customer: request.customer)
        try Self.require(ip: request.ip)
        let (state, isNew) = try await store.beginUnassign(
            customer: request.customer, ip: request.ip, key: request.idempotencyKey)
        return try await launch(state, isNew: isNew)
    }

    package func release(
        request: Reservedip_V1_ReleaseRequest, context: ServerContext
    ) async throws -> Reservedip_V1_ReleaseResponse {
        try Self.require(customer: request.customer)
        try Self.require(ip: request.ip)
        if let state = try await store.release(customer: request.customer, ip: request.ip, key: request.idempotencyKey)
        {
            // The IP is gone from the account already; leaving its droplet is the orchestrator's business, not the
            // customer's: it waits for the droplet's turn rather than refusing.
            driver.drive(state.action.id)
        }
        return Reservedip_V1_ReleaseResponse()
    }

    package func get(request: Reservedip_V1_GetRequest, context: ServerContext) async throws -> Reservedip_V1_ReservedIP
    {
        try Self.require(customer: request.customer)
        guard let ip = try await store.reservedIP(request.ip, customer: request.customer) else {
            throw ReservedIPError.notFound("reserved IP \(request.ip)")
        }
        return ip
    }

    package func list(
        request: Reservedip_V1_ListRequest, context: ServerContext
    ) async throws -> Reservedip_V1_ListResponse {
        try Self.require(customer: request.customer)
        let page = try await store.reservedIPs(
            customer: request.customer, limit: Self.pageSize(request.pageSize), offset: Int(request.offset))
        return Reservedip_V1_ListResponse(reservedIps: page.items, total: UInt32(clamping: page.total))
    }

    package func listActions(
        request: Reservedip_V1_ListActionsRequest, context: ServerContext
    ) async throws -> Reservedip_V1_ListActionsResponse {
        try Self.require(customer: request.customer)
        let page = try await store.actions(
            customer: request.customer, ip: request.ip.isEmpty ? nil : request.ip,
            limit: Self.pageSize(request.pageSize), offset: Int(request.offset)
        )
        return Reservedip_V1_ListActionsResponse(actions: page.items, total: UInt32(clamping: page.total))
    }

    package func getAction(
        request: Reservedip_V1_GetActionRequest, context: ServerContext
    ) async throws -> Reservedip_V1_Action {
        try Self.require(customer: request.customer)
        let found =
            request.ip.isEmpty
            ? try await store.action(id: request.id, customer: request.customer)
            : try await store.action(id: request.id, customer: request.customer, ip: request.ip)
        guard let state = found else { throw ReservedIPError.notFound("action \(request.id)") }
        return state.action
    }

    package func stats(
        request: Reservedip_V1_StatsRequest, context: ServerContext
    ) async throws -> Reservedip_V1_StatsResponse {
        Reservedip_V1_StatsResponse(
            databaseConnections: UInt32(clamping: try await store.databaseConnections()),
            actionsInProgress: UInt32(clamping: try await store.actionsInProgressCount())
        )
    }
}

/// The orchestrator's refusals as gRPC statuses: the one place they meet the wire. The messages are the customer's:
/// the aggregator shows them as they are.
extension ReservedIPError: RPCStatusConvertible {
    package var rpcError: RPCError {
        switch self {
        case .notFound(let what): RPCError(code: .notFound, message: "\(what) not found")
        case .ipBusy: RPCError(code: .failedPrecondition, message: "The reserved IP already has a pending event.")
        case .dropletBusy: RPCError(code: .failedPrecondition, message: "Droplet already has a pending event.")
        case .alreadyAssigned(let dropletId):
            RPCError(code: .failedPrecondition, message: "The reserved IP is already assigned to droplet \(dropletId).")
        case .dropletHasIP(let dropletId, let ip):
            RPCError(code: .failedPrecondition, message: "Droplet \(dropletId) already has reserved IP \(ip).")
        case .notAssigned: RPCError(code: .failedPrecondition, message: "The reserved IP is not assigned to a droplet.")
        case .noPool(let region):
            RPCError(code: .failedPrecondition, message: "region \(region) has no reserved IP pool")
        case .poolExhausted(let region):
            RPCError(code: .resourceExhausted, message: "no reserved IP is free in \(region)")
        case .corrupt(let what): RPCError(code: .internal, message: what)
        }
    }
}
