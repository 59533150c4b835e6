internal import Foundation
package import HarpoonAPI
package import Hummingbird
internal import NIOCore
internal import ReservedIPAPI

/// The customer API: DigitalOcean API v2 shapes over Harpoon (droplets, their actions) and the reserved-IP
/// orchestrator (reserved IPs, their actions). It owns no data: every answer is gathered over RPC.
package struct API: Sendable {
    package struct Configuration: Sendable {
        /// Bearer token → customer.
        package var tokens: [String: String]
        package var catalog: Catalog
        package var limits: RateLimiter.Limits
        /// Budgets of particular tokens.
        package var tokenLimits: [String: RateLimiter.Limits]
        /// The share of the traces this API starts whose spans are recorded (0...1); a caller's `traceparent` decides
        /// for its own.
        package var traceSampleRatio: Double

        package init(
            tokens: [String: String], catalog: Catalog, limits: RateLimiter.Limits = .init(),
            tokenLimits: [String: RateLimiter.Limits] = [:],
            traceSampleRatio: Double = 1
        ) {
            self.tokens = tokens
            self.catalog = catalog
            self.limits = limits
            self.tokenLimits = tokenLimits
            self.traceSampleRatio = traceSampleRatio
        }
    }

    let harpoon: Harpoon_V1_Harpoon.Client
    let reservedIPs: Reservedip_V1_ReservedIPs.Client
    let configuration: Configuration
    let render: Render
    let guesses = DropletGuesses()

    /// Droplet actions customers can request, and the event types shown as droplet actions.
    static let dropletActionTypes: Set<String> = ["power_on", "power_off", "reboot", "shutdown", "power_cycle"]
    static let documentedUnsupported: Set<String> = [
        "enable_ipv6", "enable_backups", "disable_backups", "password_reset", "resize", "rebuild", "rename", "snapshot",
        "restore",
        "change_kernel", "enable_private_networking", "change_backup_policy",
    ]
    static let shownDropletEventTypes = ["create", "destroy"] + dropletActionTypes.sorted()

    /// Every internal call: bounded, and retried when the service is briefly unreachable (mutations carry an
    /// idempotency key, so a retry never acts twice).
    static let call = CallOptions(timeout: .seconds(10), retry: RetryPolicy(maxAttempts: 4))

    package init(harpoon: RPCClient, reservedIPs: RPCClient, configuration: Configuration) {
        self.harpoon = Harpoon_V1_Harpoon.Client(harpoon)
        self.reservedIPs = Reservedip_V1_ReservedIPs.Client(reservedIPs)
        self.configuration = configuration
        self.render = Render(catalog: configuration.catalog)
    }

    /// The router with every endpoint behind the auth, rate-limit and error middleware.
    package func router() -> Router<APIContext> {
        let router = Router(context: APIContext.self)
        router.add(
            middleware: APIMiddleware(
                tokens: configuration.tokens,
                limiter: RateLimiter(defaults: configuration.limits, overrides: configuration.tokenLimits),
                traceSampleRatio: configuration.traceSampleRatio
            ))
        let v2 = router.group("v2")
        v2.get("regions") { request, _ in try await self.regions(request) }
        v2.get("sizes") { request, _ in try await self.sizes(request) }
        v2.get("droplets") { request, context in try await self.listDroplets(request, context) }
        v2.post("droplets") { request, context in try await self.createDroplets(request, context) }
        v2.get("droplets/:id") { _, context in try await self.getDroplet(context) }
        v2.delete("droplets/:id") { _, context in try await self.deleteDroplet(context) }
        v2.get("droplets/:id/actions") { request, context in try await self.listDropletActions(request, context) }
        v2.post("droplets/:id/actions") { request, context in try await self.postDropletAction(request, context) }
        v2.get("droplets/:id/actions/:action") { _, context in try await self.getDropletAction(context) }
        v2.get("actions") { request, context in try await self.listActions(request, context) }
        v2.get("actions/:action") { _, context in try await self.getAction(context) }
        for (path, legacy) in [("reserved_ips", false), ("floating_ips", true)] {
            v2.get(RouterPath(path)) { request, context in try await self.listIPs(request, context, legacy: legacy) }
            v2.post(RouterPath(path)) { request, context in try await self.createIP(request, context, legacy: legacy) }
            v2.get(RouterPath("\(path)/:ip")) { _, context in try await self.getIP(context, legacy: legacy) }
            v2.delete(RouterPath("\(path)/:ip")) { _, context in try await self.deleteIP(context) }
            v2.get(RouterPath("\(path)/:ip/actions")) { request, context in
                try await self.listIPActions(request, context, legacy: legacy)
            }
            v2.post(RouterPath("\(path)/:ip/actions")) { request, context in
                try await self.postIPAction(request, context, legacy: legacy)
            }
            v2.get(RouterPath("\(path)/:ip/actions/:action")) { _, context in
                try await self.getIPAction(context, legacy: legacy)
            }
        }
        return router
    }

    // MARK: Responses and requests

    static func json(_ value: JSON, status: HTTPResponse.Status = .ok) -> Response {
        let bytes = value.encoded()
        return Response(
            status: status, headers: [.contentType: "application/json; charset=utf-8"],
            body: ResponseBody(byteBuffer: ByteBuffer(bytes: bytes))
        )
    }

    static func noContent() -> Response { Response(status: .noContent) }

    /// The JSON object in the body: 400 when it is not JSON, 422 when it is not an object.
    static func body(_ request: Request) async throws -> JSON {
        var request = request
        let buffer = try await request.collectBody(upTo: 1 << 20)
        guard let value = JSON.parse(Array(buffer.readableBytesView)) else { throw APIError.badBody }
        guard case .object = value else { throw APIError.unprocessable("the request body must be a JSON object") }
        return value
    }

    static func integer(_ context: APIContext, _ name: String) throws -> Int64 {
        guard let text = context.parameters.get(name), let value = Int64(text), value > 0 else {
            throw APIError.notFound
        }
        return value
    }

    /// `page` and `per_page` as DigitalOcean reads them: 20 per page by default, at most 200.
    struct Paging {
        var page: Int
        var perPage: Int
        var offset: Int { (page - 1) * perPage }

        init(_ request: Request) throws {
            let query = request.uri.queryParameters
            func number(_ name: String, default value: Int) throws -> Int {
                guard let text = query.get(name) else { return value }
                guard let number = Int(text) else { throw APIError.unprocessable("\(name) must be an integer") }
                return number
            }
            page = max(1, try number("page", default: 1))
            perPage = min(200, max(1, try number("per_page", default: 20)))
        }
    }

    /// `links` and `meta` of a collection, with absolute URLs on the host the client called.
    static func collection(_ key: String, _ items: [JSON], total: Int, paging: Paging, request: Request) -> JSON {
        let last = max(1, (total + paging.perPage - 1) / paging.perPage)
        let path =
            request.uri.path.hasSuffix("/") && request.uri.path.count > 1
            ? String(request.uri.path.dropLast()) : request.uri.path
        func url(_ page: Int) -> JSON { .string(href(request, "\(path)?page=\(page)&per_page=\(paging.perPage)")) }
        var pages: [(String, JSON)] = []
        if paging.page > 1 {
            pages.append(("first", url(1)))
            pages.append(("prev", url(min(paging.page - 1, last))))
        }
        if paging.page < last {
            pages.append(("next", url(paging.page + 1)))
            pages.append(("last", url(last)))
        }
        return .object([
            (key, .array(items)), ("links", pages.isEmpty ? .object([]) : .object([("pages", .object(pages))])),
            ("meta", .object([("total", .int(Int64(total)))])),
        ])
    }

    // MARK: Catalog

    func regions(_ request: Request) async throws -> Response {
        let paging = try Paging(request)
        let all = configuration.catalog.regions.map { render.catalog.regionJSON($0.slug) }
        let page = Array(all.dropFirst(paging.offset).prefix(paging.perPage))
        return Self.json(Self.collection("regions", page, total: all.count, paging: paging, request: request))
    }

    func sizes(_ request: Request) async throws -> Response {
        let paging = try Paging(request)
        let all = configuration.catalog.sizes.map(render.catalog.sizeJSON)
        let page = Array(all.dropFirst(paging.offset).prefix(paging.perPage))
        return Self.json(Self.collection("sizes", page, total: all.count, paging: paging, request: request))
    }

    // MARK: Droplets

    static let namePattern = try? NSRegularExpression(pattern: "^[a-zA-Z0-9]?[a-z0-9A-Z.\\-]*[a-z0-9A-Z]$")

    static func validName(_ name: String) -> Bool {
        guard !name.isEmpty, name.count <= 255, let pattern = namePattern else { return false }
        return pattern.firstMatch(in: name, range: NSRange(name.startIndex..., in: name)) != nil
    }

    func createDroplets(_ request: Request, _ context: APIContext) async throws -> Response {
        let body = try await Self.body(request)
        var names: [String] = []
        if let name = body["name"], !name.isNull {
            guard let name = name.string else { throw APIError.unprocessable("name must be a string") }
            names = [name]
        }
        let many = body["names"].map { !$0.isNull } ?? false
        if many {
            guard names.isEmpty else { throw APIError.unprocessable("give name or names, not both") }
            guard case .array(let list)? = body["names"], !list.isEmpty, list.count <= 10,
                list.allSatisfy({ $0.string != nil })
            else {
                throw APIError.unprocessable("names must be a list of 1 to 10 names")
            }
            names = list.compactMap(\.string)
        }
        guard !names.isEmpty else { throw APIError.unprocessable("name is required") }
        for name in names where !Self.validName(name) {
            throw APIError.unprocessable(
                "name '\(name)' is invalid: only letters, digits, '.' and '-', up to 255 characters")
        }
        guard let sizeSlug = body["size"]?.string else { throw APIError.unprocessable("size is required") }
        guard let size = configuration.catalog.size(sizeSlug) else {
            throw APIError.unprocessable("size '\(sizeSlug)' is not available")
        }
        let image: String
        switch body["image"] {
        case .string(let slug)? where !slug.isEmpty: image = slug
        case let value? where value.int != nil: image = "image-\(value.int ?? 0)"
        default: throw APIError.unprocessable("image is required (a slug or an id)")
        }
        var region = configuration.catalog.regions.first?.slug ?? ""
        if let requested = body["region"], !requested.isNull {
            guard let slug = requested.string, configuration.catalog.region(slug) != nil else {
                throw APIError.unprocessable("region \(requested.string ?? "") is not available")
            }
            region = slug
        }
        var droplets: [JSON] = []
        var actions: [JSON] = []
        for (index, name) in names.enumerated() {
            let created = try await harpoon.createDroplet(
                Harpoon_V1_CreateDropletRequest(
                    idempotencyKey: "\(context.requestId)/\(index)", customer: context.customer, name: name,
                    region: region,
                    size: size.schedulerSize, image: image
                ),
                options: Self.call
            )
            droplets.append(render.droplet(created.droplet ?? Harpoon_V1_Droplet()))
            let actionId = ActionID.public(eventId: created.event?.id ?? 0)
            actions.append(
                .object([
                    ("id", .int(actionId)), ("rel", .string("create")),
                    ("href", .string(Self.href(request, "/v2/actions/\(actionId)"))),
                ]))
        }
        let links = JSON.object([("actions", .array(actions))])
        if many { return Self.json(.object([("droplets", .array(droplets)), ("links", links)]), status: .accepted) }
        return Self.json(.object([("droplet", droplets.first ?? .null), ("links", links)]), status: .accepted)
    }

    /// An absolute URL on the host the client called (python-digitalocean follows links verbatim).
    static func href(_ request: Request, _ path: String) -> String {
        "http://\(request.head.authority ?? "127.0.0.1")\(path)"
    }

    func listDroplets(_ request: Request, _ context: APIContext) async throws -> Response {
        let paging = try Paging(request)
        let query = request.uri.queryParameters
        if let type = query.get("type"), type != "droplets" {
            // No GPU droplets here.
            return Self.json(Self.collection("droplets", [], total: 0, paging: paging, request: request))
        }
        if query.get("tag_name") != nil {
            // Shoal's droplets carry no tags, so none has the tag.
            return Self.json(Self.collection("droplets", [], total: 0, paging: paging, request: request))
        }
        let page = try await harpoon.listDroplets(
            Harpoon_V1_ListDropletsRequest(
                customer: context.customer, pageSize: UInt32(paging.perPage), offset: UInt32(paging.offset),
                name: query.get("name") ?? ""
            ),
            options: Self.call
        )
        return Self.json(
            Self.collection(
                "droplets", page.droplets.map(render.droplet), total: Int(page.total), paging: paging, request: request)
        )
    }

    func droplet(_ id: Int64, customer: String) async throws -> Harpoon_V1_Droplet {
        try await harpoon.getDroplet(Harpoon_V1_GetDropletRequest(id: id, customer: customer), options: Self.call)
    }

    func getDroplet(_ context: APIContext) async throws -> Response {
        let droplet = try await droplet(try Self.integer(context, "id"), customer: context.customer)
        return Self.json(.object([("droplet", render.droplet(droplet))]))
    }

    func deleteDroplet(_ context: APIContext) async throws -> Response {
        _ = try await harpoon.deleteDroplet(
            Harpoon_V1_DeleteDropletRequest(
                idempotencyKey: context.requestId, id: try Self.integer(context, "id"), customer: context.customer),
            options: Self.call
        )
        return Self.noContent()
    }

    func postDropletAction(_ request: Request, _ context: APIContext) async throws -> Response {
        let id = try Self.integer(context, "id")
        let body = try await Self.body(request)
        _ = try await droplet(id, customer: context.customer)  // 404 before 422, as DigitalOcean answers
        guard let type = body["type"]?.string else { throw APIError.unprocessable("type is required") }
        guard Self.dropletActionTypes.contains(type) else {
            throw APIError.unprocessable(
                Self.documentedUnsupported.contains(type)
                    ? "the action type \(type) is not supported here" : "'\(type)' is not a valid action type"
            )
        }
        let event = try await harpoon.createEvent(
            Harpoon_V1_CreateEventRequest(
                idempotencyKey: context.requestId, type: type, dropletId: id, customer: context.customer,
                exclusive: true),
            options: Self.call
        )
        return Self.json(.object([("action", render.action(event))]), status: .created)
    }

    func listDropletActions(_ request: Request, _ context: APIContext) async throws -> Response {
        let id = try Self.integer(context, "id")
        let paging = try Paging(request)
        _ = try await droplet(id, customer: context.customer)
        let page = try await harpoon.listEvents(
            Harpoon_V1_ListEventsRequest(
                dropletId: id, customer: context.customer, pageSize: UInt32(paging.perPage),
                offset: UInt32(paging.offset), types: Self.shownDropletEventTypes
            ),
            options: Self.call
        )
        return Self.json(
            Self.collection(
                "actions", page.events.map(render.action), total: Int(page.total), paging: paging, request: request))
    }

    /// A droplet action (a Harpoon event of a shown type) of the customer's, or 404.
    func dropletEvent(publicId: Int64, customer: String) async throws -> Harpoon_V1_Event {
        guard case .harpoon(let eventId)? = ActionID.source(publicId) else { throw APIError.notFound }
        let event = try await harpoon.getEvent(
            Harpoon_V1_GetEventRequest(id: eventId, customer: customer), options: Self.call)
        guard Self.shownDropletEventTypes.contains(event.type) else { throw APIError.notFound }
        return event
    }

    func getDropletAction(_ context: APIContext) async throws -> Response {
        let id = try Self.integer(context, "id")
        let event = try await dropletEvent(publicId: try Self.integer(context, "action"), customer: context.customer)
        guard event.dropletId == id else { throw APIError.notFound }
        return Self.json(.object([("action", render.action(event))]))
    }

    // MARK: Actions of every kind

    func getAction(_ context: APIContext) async throws -> Response {
        let publicId = try Self.integer(context, "action")
        switch ActionID.source(publicId) {
        case .harpoon?:
            return Self.json(
                .object([
                    ("action", render.action(try await dropletEvent(publicId: publicId, customer: context.customer)))
                ]))
        case .reservedIP(let id)?:
            let action = try await reservedIPs.getAction(
                Reservedip_V1_GetActionRequest(customer: context.customer, id: id), options: Self.call)
            return Self.json(.object([("action", render.action(action, legacy: false))]))
        case nil:
            throw APIError.notFound
        }
    }

    /// Every action of the customer, droplet and reserved-IP alike, oldest first: the two sources merged by start
    /// time, so a page is the same slice of one ordered list whichever source its actions come from.
    func listActions(_ request: Request, _ context: APIContext) async throws -> Response {
        let paging = try Paging(request)
        let wanted = paging.offset + paging.perPage
        async let eventsTask = collectEvents(customer: context.customer, count: wanted)
        async let ipActionsTask = collectIPActions(customer: context.customer, count: wanted)
        let (events, eventTotal) = try await eventsTask
        let (ipActions, ipTotal) = try await ipActionsTask
        var merged: [(Double, Int64, JSON)] = events.map {
            ($0.createdAt?.secondsSince1970 ?? 0, ActionID.public(eventId: $0.id), render.action($0))
        }
        merged += ipActions.map {
            (
                $0.startedAt?.secondsSince1970 ?? 0, ActionID.public(reservedIPActionId: $0.id),
                render.action($0, legacy: false)
            )
        }
        merged.sort { $0.0 != $1.0 ? $0.0 < $1.0 : $0.1 < $1.1 }
        let page = merged.dropFirst(paging.offset).prefix(paging.perPage).map(\.2)
        return Self.json(
            Self.collection("actions", Array(page), total: eventTotal + ipTotal, paging: paging, request: request))
    }

    func collectEvents(customer: String, count: Int) async throws -> ([Harpoon_V1_Event], Int) {
        try await Self.collect(count: count) { offset in
            let page = try await harpoon.listEvents(
                Harpoon_V1_ListEventsRequest(
                    customer: customer, pageSize: 200, offset: offset, types: Self.shownDropletEventTypes),
                options: Self.call
            )
            return (page.events, Int(page.total))
        }
    }

    func collectIPActions(customer: String, count: Int) async throws -> ([Reservedip_V1_Action], Int) {
        try await Self.collect(count: count) { offset in
            let page = try await reservedIPs.listActions(
                Reservedip_V1_ListActionsRequest(customer: customer, pageSize: 200, offset: offset), options: Self.call)
            return (page.actions, Int(page.total))
        }
    }

    /// The first `count` items of a paginated source (fewer if it has fewer), and its total.
    static func collect<Item>(
        count: Int, page: (_ offset: UInt32) async throws -> ([Item], Int)
    ) async throws -> ([Item], Int) {
        var items: [Item] = []
        var total = 0
        repeat {
            let (more, all) = try await page(UInt32(clamping: items.count))
            total = all
            items += more
            if more.isEmpty { break }
        } while items.count < min(count, total)
        return (items, total)
    }

    // MARK: Reserved IPs

    static func keys(legacy: Bool) -> (one: String, many: String) {
        legacy ? ("floating_ip", "floating_ips") : ("reserved_ip", "reserved_ips")
    }

    static func ipParameter(_ context: APIContext) throws -> String {
        guard let ip = context.parameters.get("ip"), ip.split(separator: ".").count == 4,
            ip.allSatisfy({ $0.isNumber || $0 == "." })
        else {
            throw APIError.notFound
        }
        return ip
    }

    /// The IP with its droplet, as the public API embeds it. A failure to fetch the droplet fails the request (an
    /// assigned IP must not look unassigned because Harpoon was slow); only a droplet that is gone shows as `null`.
    ///
    /// `fetchedAhead` is a droplet asked for before the IP's answer came (see ``getIP(_:legacy:)``): used if it is the
    /// IP's droplet and its answer says something (the droplet, or that it is gone); otherwise it is fetched now.
    func renderIP(
        _ ip: Reservedip_V1_ReservedIP, customer: String,
        fetchedAhead: (id: Int64, result: Result<Harpoon_V1_Droplet, any Error>)? = nil
    ) async throws -> JSON {
        guard ip.dropletId != 0 else { return render.reservedIP(ip, droplet: nil) }
        var ahead = fetchedAhead?.id == ip.dropletId ? fetchedAhead?.result : nil
        // Harpoon failed: ask again
        if case .failure(let error)? = ahead, (error as? RPCError)?.code != .notFound { ahead = nil }
        do {
            let fetched = if let ahead { try ahead.get() } else { try await droplet(ip.dropletId, customer: customer) }
            return render.reservedIP(ip, droplet: fetched)
        } catch let error as RPCError where error.code == .notFound {
            // The droplet was just destroyed; the orchestrator drops the IP from it as soon as it hears.
            return render.reservedIP(ip, droplet: nil)
        }
    }

    func listIPs(_ request: Request, _ context: APIContext, legacy: Bool) async throws -> Response {
        let paging = try Paging(request)
        let page = try await reservedIPs.list(
            Reservedip_V1_ListRequest(
                customer: context.customer, pageSize: UInt32(paging.perPage), offset: UInt32(paging.offset)),
            options: Self.call
        )
        // The page's droplets come from Harpoon in parallel.
        let rendered = try await withThrowingTaskGroup(of: (Int, JSON).self) { group in
            for (index, ip) in page.reservedIps.enumerated() {
                group.addTask { (index, try await self.renderIP(ip, customer: context.customer)) }
            }
            var items = [JSON](repeating: .null, count: page.reservedIps.count)
            for try await (index, item) in group { items[index] = item }
            return items
        }
        return Self.json(
            Self.collection(
                Self.keys(legacy: legacy).many, rendered, total: Int(page.total), paging: paging, request: request))
    }

    /// The droplet `id`, or why not; `nil` for no id.
    private func fetchAhead(
        _ id: Int64?, customer: String
    ) async -> (id: Int64, result: Result<Harpoon_V1_Droplet, any Error>)? {
        guard let id else { return nil }
        do {
            return (id, .success(try await droplet(id, customer: customer)))
        } catch {
            return (id, .failure(error))
        }
    }

    /// One IP with its droplet. Harpoon is asked for the droplet the IP was last seen on at the same time as the
    /// orchestrator is asked for the IP (see ``DropletGuesses``); if the IP has moved, its droplet is fetched after.
    func getIP(_ context: APIContext, legacy: Bool) async throws -> Response {
        let address = try Self.ipParameter(context)
        let customer = context.customer
        async let early = fetchAhead(guesses.guess(ip: address, customer: customer), customer: customer)
        let ip = try await reservedIPs.get(
            Reservedip_V1_GetRequest(customer: customer, ip: address), options: Self.call)
        guesses.record(ip: address, customer: customer, dropletId: ip.dropletId)
        let rendered = try await renderIP(ip, customer: customer, fetchedAhead: await early)
        return Self.json(.object([(Self.keys(legacy: legacy).one, rendered)]))
    }

    func createIP(_ request: Request, _ context: APIContext, legacy: Bool) async throws -> Response {
        let body = try await Self.body(request)
        let region = body["region"].flatMap { $0.isNull ? nil : $0 }
        let dropletId = body["droplet_id"].flatMap { $0.isNull ? nil : $0 }
        var reserve = Reservedip_V1_ReserveRequest(idempotencyKey: context.requestId, customer: context.customer)
        switch (region, dropletId) {
        case (_?, _?):
            throw APIError.unprocessable("Cannot specify Droplet and region, they are mutually exclusive.")
        case (nil, nil):
            throw APIError.unprocessable("region or droplet_id is required")
        case (let region?, nil):
            guard let slug = region.string, configuration.catalog.region(slug) != nil else {
                throw APIError.unprocessable("region \(region.string ?? "") is not available")
            }
            reserve.region = slug
            if let project = body["project_id"], !project.isNull {
                guard let project = project.string, UUID(uuidString: project) != nil else {
                    throw APIError.unprocessable("project_id must be a UUID")
                }
                reserve.projectId = project.lowercased()
            }
        case (nil, let droplet?):
            guard let id = droplet.int, id > 0 else {
                throw APIError.unprocessable("droplet_id must be a droplet's id")
            }
            reserve.dropletId = id
        }
        if reserve.projectId.isEmpty { reserve.projectId = Self.defaultProject(context.customer) }
        let reserved = try await reservedIPs.reserve(reserve, options: Self.call)
        let ip = reserved.reservedIp ?? Reservedip_V1_ReservedIP()
        var links: [(String, JSON)] = []
        if let action = reserved.action {
            let actionId = ActionID.public(reservedIPActionId: action.id)
            links = [
                (
                    "droplets",
                    .array([
                        .object([
                            ("id", .int(action.dropletId)), ("rel", .string("droplet")),
                            ("href", .string(Self.href(request, "/v2/droplets/\(action.dropletId)"))),
                        ])
                    ])
                ),
                (
                    "actions",
                    .array([
                        .object([
                            ("id", .int(actionId)), ("rel", .string("assign_ip")),
                            ("href", .string(Self.href(request, "/v2/actions/\(actionId)"))),
                        ])
                    ])
                ),
            ]
        }
        return Self.json(
            .object([(Self.keys(legacy: legacy).one, render.reservedIP(ip, droplet: nil)), ("links", .object(links))]),
            status: .accepted)
    }

    /// The customer's default project: a stable UUID derived from the customer's name.
    static func defaultProject(_ customer: String) -> String {
        var hash: (UInt64, UInt64) = (0xcbf2_9ce4_8422_2325, 0x8422_2325_cbf2_9ce4)
        for byte in customer.utf8 {
            hash.0 = (hash.0 ^ UInt64(byte)) &* 0x100_0000_01b3
            hash.1 = (hash.1 ^ UInt64(byte)) &* 0x100_0000_01b3 &+ 1
        }
        let hex = String(format: "%016llx%016llx", hash.0, hash.1)
        let chars = Array(hex)
        func part(_ range: Range<Int>) -> String { String(chars[range]) }
        return "\(part(0..<8))-\(part(8..<12))-4\(part(13..<16))-a\(part(17..<20))-\(part(20..<32))"
    }

    func deleteIP(_ context: APIContext) async throws -> Response {
        _ = try await reservedIPs.release(
            Reservedip_V1_ReleaseRequest(
                idempotencyKey: context.requestId, customer: context.customer, ip: try Self.ipParameter(context)),
            options: Self.call
        )
        return Self.noContent()
    }

    func postIPAction(_ request: Request, _ context: APIContext, legacy: Bool) async throws -> Response {
        let ip = try Self.ipParameter(context)
        let body = try await Self.body(request)
        // 404 first
        _ = try await reservedIPs.get(Reservedip_V1_GetRequest(customer: context.customer, ip: ip), options: Self.call)
        let action: Reservedip_V1_Action
        switch body["type"]?.string {
        case "assign":
            guard let dropletId = body["droplet_id"]?.int, dropletId > 0 else {
                throw APIError.unprocessable("droplet_id is required to assign")
            }
            action = try await reservedIPs.assign(
                Reservedip_V1_AssignRequest(
                    idempotencyKey: context.requestId, customer: context.customer, ip: ip, dropletId: dropletId),
                options: Self.call
            )
        case "unassign":
            action = try await reservedIPs.unassign(
                Reservedip_V1_UnassignRequest(idempotencyKey: context.requestId, customer: context.customer, ip: ip),
                options: Self.call
            )
        case let other:
            throw APIError.unprocessable(
                other.map { "'\($0)' is not a valid action type: assign or unassign" }
                    ?? "type is required: assign or unassign")
        }
        return Self.json(.object([("action", render.action(action, legacy: legacy))]), status: .created)
    }

    func listIPActions(_ request: Request, _ context: APIContext, legacy: Bool) async throws -> Response {
        let ip = try Self.ipParameter(context)
        let paging = try Paging(request)
        _ = try await reservedIPs.get(Reservedip_V1_GetRequest(customer: context.customer, ip: ip), options: Self.call)
        let page = try await reservedIPs.listActions(
            Reservedip_V1_ListActionsRequest(
                customer: context.customer, ip: ip, pageSize: UInt32(paging.perPage), offset: UInt32(paging.offset)),
            options: Self.call
        )
        return Self.json(
            Self.collection(
                "actions", page.actions.map { render.action($0, legacy: legacy) }, total: Int(page.total),
                paging: paging, request: request))
    }

    func getIPAction(_ context: APIContext, legacy: Bool) async throws -> Response {
        let ip = try Self.ipParameter(context)
        guard case .reservedIP(let id)? = ActionID.source(try Self.integer(context, "action")) else {
            throw APIError.notFound
        }
        let action = try await reservedIPs.getAction(
            Reservedip_V1_GetActionRequest(customer: context.customer, id: id, ip: ip), options: Self.call)
        return Self.json(.object([("action", render.action(action, legacy: legacy))]))
    }
}
