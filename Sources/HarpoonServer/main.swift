// harpoon: the event API and sole owner of the events database.
import ArgumentParser
import Harpoon
import HarpoonAPI
import ServiceRuntime

struct HarpoonCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "harpoon", abstract: "Harpoon: the event API and the events database.")

    @Option(help: "Address to listen on.") var host = "127.0.0.1"
    @Option(help: "Port to listen on (0: any free port).") var port = 50050
    @Option(help: "The SQLite database file (created if missing).") var database = "harpoon.sqlite"
    @Option(help: "The scheduler, host:port (replicas: several, comma-separated).") var scheduler = "127.0.0.1:50060"
    @Option(help: "An event router, region=host:port; repeat for each region.") var router: [String] = []

    func run() async throws {
        var routers: [String: RPCClient] = [:]
        for entry in router {
            let parts = entry.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2 else { throw ValidationError("--router takes region=host:port, not '\(entry)'") }
            let address = try ServiceRuntime.address(parts[1])
            routers[parts[0]] = ServiceRuntime.serviceClient([address])
        }
        let store = try SQLiteHarpoonStore(path: database)
        let changes = ChangeNotifier()
        let schedulers = try scheduler.split(separator: ",").map { try ServiceRuntime.address(String($0)) }
        guard !schedulers.isEmpty else { throw ValidationError("--scheduler needs at least one host:port") }
        let placer = SchedulerPlacer(
            client: ServiceRuntime.serviceClient(schedulers), replicas: schedulers.count > 1 ? schedulers.map { ServiceRuntime.serviceClient([$0]) } : []
        )
        let worker = OutboxWorker(store: store, placer: placer, delivery: RouterDelivery(routers: routers), onChange: { changes.changed() })
        let server = RPCServer(
            configuration: .init(host: host, port: port),
            services: [HarpoonService(store: store, worker: worker, changes: changes, placer: placer)]
        )
        try await server.start()
        ServiceRuntime.announce("harpoon ready on \(host):\(server.port ?? port)")
        await ServiceRuntime.run(server: server, background: [{ await worker.run() }])
    }
}

ServiceRuntime.runConcurrencyOnEventLoops()
await ServiceRuntime.main(HarpoonCommand.self)
