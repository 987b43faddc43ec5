from claude_issue_solver.cli.main import main

if __name__ == "__main__":
    main()
