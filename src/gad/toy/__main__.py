from gad.errors import exit_on_user_error
from gad.toy.build import main

if __name__ == "__main__":
    with exit_on_user_error():
        main()
