// scheduler: Scheduler V2 (fleet view and placement) on ShoalRPC.
import ArgumentParser
import Scheduler
import SchedulerAPI
import ServiceRuntime

struct SchedulerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "scheduler", abstract: "Scheduler V2: places droplets on hypervisors.")

    @Option(help: "Address to listen on.") var host = "127.0.0.1"
    @Option(help: "Port to listen on (0: any free port).") var port = 50060
    @Option(help: "Seconds a placement holds capacity unless its event finishes first.") var reservationTTLSeconds = 300

    func run() async throws {
        let fleet = Fleet(reservationTTL: .seconds(reservationTTLSeconds))
        let server = RPCServer(configuration: .init(host: host, port: port), services: [SchedulerService(fleet: fleet)])
        try await server.start()
        ServiceRuntime.announce("scheduler ready on \(host):\(server.port ?? port)")
        await ServiceRuntime.run(server: server)
    }
}

ServiceRuntime.runConcurrencyOnEventLoops()
await ServiceRuntime.main(SchedulerCommand.self)
