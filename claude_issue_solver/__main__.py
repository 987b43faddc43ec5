from claude_issue_solver.cli import main

if __name__ == "__main__":
    main()
