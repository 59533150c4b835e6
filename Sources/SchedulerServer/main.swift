// scheduler: Scheduler V2 (fleet view and placement) on ShoalRPC.
import ArgumentParser
import HarpoonAPI
import Scheduler
import SchedulerAPI
import ServiceRuntime

struct SchedulerCommand: ServiceCommand {
    static let configuration = CommandConfiguration(
        commandName: "scheduler", abstract: "Scheduler V2: places droplets on hypervisors.")

    @Option(help: "Address to listen on.") var host = "127.0.0.1"
    @OptionGroup var runtime: RuntimeOptions
    @Option(help: "Port to listen on (0: any free port).") var port = 50060
    @Option(help: "Seconds a placement holds capacity unless its event finishes first.") var reservationTTLSeconds = 300
    @Option(
        help: "Harpoon, host:port (several, comma-separated): where the placements still in flight are learnt at start."
    )
    var harpoon = "127.0.0.1:50050"

    func run() async throws {
        let targets = try harpoon.split(separator: ",").map { try ServiceRuntime.address(String($0)) }
        guard !targets.isEmpty else { throw ValidationError("--harpoon needs at least one host:port") }
        // Nothing is placed until the placements in flight are loaded from Harpoon and each region's router has
        // reported all of its hypervisors: a restarted scheduler must not give away room its predecessor held.
        let fleet = Fleet(reservationTTL: .seconds(reservationTTLSeconds), startup: .recovering)
        let source = HarpoonPlacements(client: ServiceRuntime.serviceClient(targets))
        let server = RPCServer(
            configuration: .init(host: host, port: port), services: [SchedulerService(fleet: fleet)],
            interceptors: ServiceRuntime.serverInterceptors)
        let metrics = try await ServiceRuntime.startMetrics(port: runtime.metricsPort, host: host)
        try await server.start()
        ServiceRuntime.announce("scheduler ready on \(host):\(server.port ?? port)")
        await ServiceRuntime.run(
            server: server, metrics: metrics,
            background: [
                {
                    let loaded = await fleet.recover(from: source) { error in
                        ServiceRuntime.complain(
                            "scheduler: cannot load the placements in flight from Harpoon yet (placements wait): \(error)"
                        )
                    }
                    if loaded {
                        ServiceRuntime.announce(
                            "scheduler: placements in flight loaded (\(fleet.reservationCount) held)")
                    }
                },
                ServiceRuntime.gauges(every: runtime.metricsSampleSeconds, server: server) {
                    for count in fleet.hypervisorCounts() {
                        ServiceRuntime.gauge(
                            "scheduler_hypervisors", count.count,
                            dimensions: [("region", count.region), ("state", count.state)])
                    }
                },
            ])
    }
}

/// The placements in flight, page by page from Harpoon's ListPlacements.
struct HarpoonPlacements: InFlightPlacementSource {
    let harpoon: Harpoon_V1_Harpoon.Client

    init(client: RPCClient) { harpoon = Harpoon_V1_Harpoon.Client(client) }

    func placementsInFlight() async throws -> [HeldPlacement] {
        var placements: [HeldPlacement] = []
        var token = ""
        repeat {
            let page = try await harpoon.listPlacements(
                .init(pageSize: 1000, pageToken: token), options: CallOptions(timeout: .seconds(10)))
            placements += page.placements.map {
                HeldPlacement(
                    eventId: String($0.eventId), hypervisorId: $0.hypervisorId, region: $0.region,
                    customer: $0.customer,
                    dropletId: $0.dropletId, size: $0.size ?? Scheduler_V2_Size()
                )
            }
            token = page.nextPageToken
        } while !token.isEmpty
        return placements
    }
}

ServiceRuntime.runConcurrencyOnEventLoops()
await ServiceRuntime.main(SchedulerCommand.self)
